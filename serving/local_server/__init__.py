"""A development stand-in for TF Serving: REST and gRPC Predict on the newest exported version.

    python -m serving.local_server --model_name NAME --model_base_path export/NAME \
        --rest_api_port 8501 --port 8500

NOT a production server. Production serving is the `tensorflow/serving` image (see the README and
the Dockerfile); this module exists because no TF Serving binary can run on machines without
Docker (docs/ARCHITECTURE.md, "Export and serving"), and so that tests and `make demo` can talk
to a server. It answers the subset of TF Serving's API our clients use, with TF Serving's flag
names, URLs, message formats and status codes:

- REST: POST `/v1/models/<name>[/versions/<v>]:predict` with `{"signature_name": ..,
  "instances": [...]}` (row format) or `{"inputs": ...}` (columnar format), `{"b64": ..}` for
  bytes; GET `/v1/models/<name>[/versions/<v>]` (status) and `.../metadata` (signature defs).
  Errors are `{"error": "..."}` with HTTP 400 (bad input), 404 (unknown model, version or URL),
  411/413 (missing length / request larger than --max_request_bytes) or 500.
- gRPC: `tensorflow.serving.PredictionService` Predict and GetModelMetadata, and
  `tensorflow.serving.ModelService` GetModelStatus; bad input is INVALID_ARGUMENT.

Every request is checked against the signature (input names, dtypes, the JSON kind of every value,
ranks, fixed dimensions, one batch size on axis 0 across inputs, and at most
--max_candidates_per_request rows to score) before TensorFlow runs, so a mistake gets a message
that names the input; a gRPC TensorProto's declared shape is checked against its content and
--max_request_bytes before any array is made. Each REST connection has its own thread, closed
after --rest_api_idle_timeout_seconds without a request; a body that stops short of its
Content-Length is a 400 after --rest_api_body_timeout_seconds. The base path is polled every
--file_system_poll_wait_seconds: a new numbered version directory is loaded (and warmed up
with its `assets.extra/tf_serving_warmup_requests`) and then replaces the old one, as TF
Serving's default "latest version" policy does; a version that fails to load is logged and
skipped (and tried again once its files change), and the server keeps serving the previous one.

Modules: `validation` (RequestError, checking and decoding requests against the signature),
`versions` (ServedVersion, ModelRepository), `rest` (RestServer), `grpc_api` (the gRPC
services), `server` (LocalServer, `main`). Everything is importable from `serving.local_server`.
"""

from serving.local_server.grpc_api import AVAILABLE, ModelService, PredictionService
from serving.local_server.rest import RestHandler, RestServer, rest_response, to_json_value
from serving.local_server.server import LocalServer, main
from serving.local_server.validation import (
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SCORED_ROWS,
    DEFAULT_SIGNATURE,
    Limits,
    RequestError,
    Signature,
    check_inputs,
    check_proto_size,
    decode_proto_inputs,
    decode_rest_inputs,
    graph_error_text,
    json_to_array,
    rest_request,
    scored_rows,
)
from serving.local_server.versions import ModelRepository, ServedVersion

__all__ = [
    "AVAILABLE", "ModelService", "PredictionService", "RestHandler", "RestServer",
    "rest_response", "to_json_value", "LocalServer", "main", "DEFAULT_BODY_TIMEOUT_SECONDS",
    "DEFAULT_IDLE_TIMEOUT_SECONDS", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_SCORED_ROWS",
    "DEFAULT_SIGNATURE", "Limits", "RequestError", "Signature", "check_inputs",
    "check_proto_size", "decode_proto_inputs", "decode_rest_inputs", "graph_error_text",
    "json_to_array", "rest_request", "scored_rows", "ModelRepository", "ServedVersion",
]
