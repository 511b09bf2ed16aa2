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
Serving's default "latest version" policy does; a version
that fails to load is logged and skipped (and tried again once its files change), and the server
keeps serving the previous one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import concurrent.futures
import dataclasses
import http.server
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

LOG = logging.getLogger("serving.local_server")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
VERSION_PATTERN = re.compile(r"^\d+$")
DEFAULT_MAX_REQUEST_BYTES = 16 << 20
DEFAULT_MAX_SCORED_ROWS = 10_000  # 200 candidates take ~7 ms (docs/RESULTS.md); 200,000 ~a minute
DEFAULT_IDLE_TIMEOUT_SECONDS = 30.0   # a kept-alive connection with no request is then closed
DEFAULT_BODY_TIMEOUT_SECONDS = 5.0    # a body must arrive within this after its headers
DISCARD_FACTOR = 8  # an oversized body up to this many times the limit is read (and dropped)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class RequestError(Exception):
    """A request the server refuses, with TF Serving's HTTP status and gRPC code for it."""

    def __init__(self, message: str, http_status: int = 400,
                 grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code


def not_found(message: str) -> RequestError:
    return RequestError(message, 404, grpc.StatusCode.NOT_FOUND)


# --- one loaded version --------------------------------------------------------------------------
@dataclasses.dataclass
class Signature:
    """A serving signature: its function and what it accepts."""

    function: Any
    inputs: dict[str, tf.TensorSpec]


class ServedVersion:
    """One loaded SavedModel version: its signatures and its SignatureDef protos (metadata)."""

    def __init__(self, path: str, version: int):
        self.path = path
        self.version = version
        self.saved_model = tf.saved_model.load(path)
        self.signatures = {}
        for name, function in self.saved_model.signatures.items():
            _, kwargs = function.structured_input_signature
            self.signatures[name] = Signature(function, dict(kwargs))
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        graph = graphs[0] if graphs else proto.meta_graphs[0]
        for name, definition in graph.signature_def.items():
            self.signature_defs.signature_def[name].CopyFrom(definition)

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise RequestError(f"Serving signature name: {name!r} not found in signature def; "
                               f"this model has {sorted(self.signatures)}")
        return self.signatures[name]

    def predict(self, signature_name: str, arrays: Mapping[str, np.ndarray],
                max_scored_rows: int | None = None) -> dict[str, np.ndarray]:
        """Inputs -> {output name: array}; `max_scored_rows` as in `check_inputs`."""
        signature = self.signature(signature_name)
        return self.run(signature_name, check_inputs(signature_name or DEFAULT_SIGNATURE,
                                                     signature, arrays, max_scored_rows))

    def run(self, signature_name: str, tensors: Mapping[str, tf.Tensor]
            ) -> dict[str, np.ndarray]:
        """Checked inputs (`check_inputs`) -> {output name: array}."""
        signature = self.signature(signature_name)
        try:
            outputs = signature.function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            # Checks inside the graph (e.g. score_candidates' shape asserts).
            raise RequestError(graph_error_text(error.message)) from None
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self) -> int:
        """Replays the export's warmup requests (TF Serving's file format); returns how many."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name, decode_proto_inputs(
                    request.inputs, self.signature(request.model_spec.signature_name)))
                count += 1
        return count


def graph_error_text(message: str) -> str:
    """The useful part of a TF runtime error: an assert's own message and data, else its last
    line that is not graph plumbing (node names, stack placeholders)."""
    match = re.search(r"assertion failed: (.*)", message)
    if match:  # "[message] [data] ..." on one line
        return " ".join(re.findall(r"\[([^\]]*)\]", match.group(1))) or match.group(1)
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(
                 ("Graph execution error", "Detected at node", "<stack", "[[{{node"))]
    return lines[-1] if lines else message


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def scored_rows(spec: tf.TensorSpec, shape: tuple[int, ...]) -> int:
    """The rows one input asks the model to score: the product of the dimensions its signature
    leaves open (users x candidates for score_candidates' candidate_* [U, N], the batch B for a
    [B, 50] history)."""
    return int(np.prod([g for w, g in zip(spec.shape.as_list(), shape) if w is None],
                       dtype=object))


def check_inputs(signature_name: str, signature: Signature, arrays: Mapping[str, np.ndarray],
                 max_scored_rows: int | None = None) -> dict[str, tf.Tensor]:
    """Names, ranks, fixed dimensions, a common batch size, and at most `max_scored_rows` rows
    (or users x candidates) to score; arrays already have the dtype."""
    expected = signature.inputs
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected))
    if missing or unknown:
        problems = []
        if missing:
            problems.append("missing input(s) " + ", ".join(map(repr, missing)))
        if unknown:
            problems.append("unknown input(s) " + ", ".join(map(repr, unknown)))
        raise RequestError(f"{'; '.join(problems)} for signature {signature_name!r}, which "
                           f"expects {sorted(expected)}")
    batch_sizes = {}
    for name, spec in expected.items():
        array = arrays[name]
        want = spec.shape.as_list()
        if array.ndim != len(want) or any(w is not None and w != g
                                          for w, g in zip(want, array.shape)):
            raise RequestError(f"input {name!r} must have shape {_shape_text(want)} (rank "
                               f"{len(want)}), got {_shape_text(array.shape)}")
        if want and want[0] is None:
            batch_sizes[name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"{n} {s}" for n, s in sorted(batch_sizes.items()))
        raise RequestError("inputs must have the same size on axis 0 (one row per example or "
                           f"user); got {sizes}")
    if max_scored_rows is not None:
        rows = {name: scored_rows(spec, arrays[name].shape) for name, spec in expected.items()}
        name = max(sorted(rows), key=rows.__getitem__) if rows else None
        if name is not None and rows[name] > max_scored_rows:
            raise RequestError(f"input {name!r} of shape {_shape_text(arrays[name].shape)} asks "
                               f"for {rows[name]} rows (or users x candidates) to be scored; "
                               f"this server scores at most {max_scored_rows} per request "
                               "(--max_candidates_per_request): split the request")
    return {name: tf.constant(arrays[name], dtype=spec.dtype) for name, spec in expected.items()}


# --- decoding request values ---------------------------------------------------------------------
_DATATYPES = frozenset(tf.dtypes.as_dtype(d).as_datatype_enum for d in (
    tf.float16, tf.float32, tf.float64, tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8,
    tf.uint16, tf.uint32, tf.uint64, tf.bool, tf.string, tf.bfloat16, tf.complex64,
    tf.complex128))
_INTEGER_DTYPES = (tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32,
                   tf.uint64)


def _shape_and_leaves(value: Any, name: str, rank: int) -> tuple[tuple[int, ...], list]:
    """A JSON value -> (its shape, its leaves in row-major order); nested at most `rank` deep
    (so a hostile nesting costs no more than the input's own rank), and not ragged."""
    if not isinstance(value, list):
        return (), [value]
    if rank == 0:
        raise RequestError(f"input {name!r} is nested deeper than its rank allows")
    if not any(isinstance(v, list) for v in value):  # the innermost level: no recursion
        return (len(value),), value
    parts = [_shape_and_leaves(v, name, rank - 1) for v in value]
    inner = parts[0][0]
    if any(shape != inner for shape, _ in parts):
        raise RequestError(f"input {name!r} is ragged: every row must have the same length")
    return (len(value), *inner), [leaf for _, leaves in parts for leaf in leaves]


def _decode_bytes(leaf: Any, name: str) -> bytes:
    if isinstance(leaf, str):
        return leaf.encode("utf-8", "surrogatepass")
    if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
            raise RequestError(f"input {name!r}: invalid base64 in {{\"b64\": ...}}") from None
    raise RequestError(f"input {name!r} expects strings (or {{\"b64\": ...}}), got "
                       f"{_json_kind(leaf)}")


def _json_kind(leaf: Any) -> str:
    """What a JSON leaf is, in a message."""
    if isinstance(leaf, bool):  # before int: True is an int in Python, not in JSON
        return "a boolean"
    if isinstance(leaf, float):
        return "a non-integer number"
    return {int: "an integer", str: "a string", dict: "an object", type(None): "null"}.get(
        type(leaf), type(leaf).__name__)


def json_to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value -> an array of the spec's dtype, or a RequestError that names the input.

    Every leaf must be of the dtype's JSON kind: an integer (not `true`, not 1.0) for integer
    inputs, a number for float inputs, a boolean for bool inputs, a string or {"b64": ..} for
    string inputs; no conversion is guessed.
    """
    dtype = spec.dtype
    rank = spec.shape.rank if spec.shape.rank is not None else 32
    shape, leaves = _shape_and_leaves(value, name, rank)
    if dtype == tf.string:
        return np.array([_decode_bytes(leaf, name) for leaf in leaves],
                        dtype=object).reshape(shape)
    if dtype == tf.bool:
        allowed, want = (bool,), "booleans"
    elif dtype in _INTEGER_DTYPES:
        allowed, want = (int,), f"{dtype.name} integers"
    elif dtype.is_floating:
        allowed, want = (int, float), f"{dtype.name} numbers"
    else:
        raise RequestError(f"input {name!r} has dtype {dtype.name}, which this server does not "
                           "decode from JSON")
    # type() rather than isinstance(): `true` is an int to isinstance(), never to this server.
    wrong = [leaf for leaf in leaves if type(leaf) not in allowed][:1]
    if wrong:
        raise RequestError(f"input {name!r} expects {want}, got {_json_kind(wrong[0])}")
    if dtype in _INTEGER_DTYPES and leaves:
        info = np.iinfo(dtype.as_numpy_dtype)
        if min(leaves) < info.min or max(leaves) > info.max:
            raise RequestError(f"input {name!r}: a value is out of the {dtype.name} range")
    return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)


def decode_rest_inputs(body: Mapping[str, Any], signature: Signature) -> tuple[dict, bool]:
    """A predict request's JSON -> ({input name: array}, row format?)."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise RequestError("the request must have exactly one of \"instances\" (row format) or "
                           "\"inputs\" (columnar format)")
    names = sorted(signature.inputs)
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError("\"instances\" must be a non-empty list of rows")
        if all(isinstance(row, dict) and "b64" not in row for row in instances):
            keys = set(instances[0])
            for i, row in enumerate(instances):
                if set(row) != keys:
                    raise RequestError(f"every instance must have the same named inputs; "
                                       f"instance {i} has {sorted(row)}, instance 0 has "
                                       f"{sorted(keys)}")
            columns = {key: [row[key] for row in instances] for key in keys}
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise RequestError(f"this signature has several inputs {names}: each instance must "
                               "be an object {input name: value}")
        row_format = True
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"} and len(names) == 1):
            columns = inputs
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise RequestError(f"this signature has several inputs {names}: \"inputs\" must be "
                               "an object {input name: value}")
        row_format = False
    arrays = {}
    for name, value in columns.items():
        spec = signature.inputs.get(name)
        # Unknown names are reported with the missing ones by check_inputs.
        arrays[name] = json_to_array(name, value, spec) if spec is not None else np.zeros(0)
    return arrays, row_format


def _proto_value_count(proto) -> int:
    """How many values a TensorProto holds in its typed value fields (`*_val`; a complex value
    is two numbers)."""
    return sum(len(value) // (2 if field.name in ("scomplex_val", "dcomplex_val") else 1)
               for field, value in proto.ListFields() if field.name.endswith("_val"))


def check_proto_size(name: str, proto, spec: tf.TensorSpec, max_bytes: int) -> None:
    """Checks a TensorProto's declared shape against the signature, its content and the size
    limit *before* it is turned into an array: TF fills a tensor whose proto holds fewer values
    than its shape declares by repeating the last one, so a small request declaring [30000000]
    would otherwise become hundreds of MB."""
    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"input {name!r}: the TensorProto has no shape (unknown rank)")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise RequestError(f"input {name!r}: negative dimension in shape {_shape_text(shape)}")
    want = spec.shape.as_list()
    if len(shape) != len(want) or any(w is not None and w != g for w, g in zip(want, shape)):
        raise RequestError(f"input {name!r} must have shape {_shape_text(want)} (rank "
                           f"{len(want)}), got {_shape_text(shape)}")
    count = int(np.prod(shape, dtype=object))
    itemsize = 8 if spec.dtype == tf.string else spec.dtype.size  # a string: one pointer
    if count * itemsize > max_bytes:
        raise RequestError(f"input {name!r} declares shape {_shape_text(shape)} ({count} values, "
                           f"{count * itemsize} bytes), more than the server's limit of "
                           f"{max_bytes} bytes (--max_request_bytes)",
                           413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if proto.tensor_content:
        if len(proto.tensor_content) != count * itemsize:
            raise RequestError(f"input {name!r} declares shape {_shape_text(shape)} ({count} "
                               f"values) but its tensor_content holds "
                               f"{len(proto.tensor_content)} bytes")
    elif _proto_value_count(proto) > count:
        raise RequestError(f"input {name!r} declares shape {_shape_text(shape)} ({count} values) "
                           f"but holds {_proto_value_count(proto)}")


def rest_request(body: Mapping[str, Any], served: "ServedVersion",
                 max_scored_rows: int | None = None) -> tuple[str, dict[str, tf.Tensor], bool]:
    """A REST predict request's JSON object -> (signature name, the checked input tensors, row
    format?), or a RequestError (HTTP 400) that says what is wrong."""
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):  # 0 or null is a mistake, not the default
        raise RequestError(f"\"signature_name\" must be a string, got "
                           f"{_json_kind(signature_name)}")
    signature_name = signature_name or DEFAULT_SIGNATURE
    signature = served.signature(signature_name)
    arrays, row_format = decode_rest_inputs(body, signature)
    return (signature_name, check_inputs(signature_name, signature, arrays, max_scored_rows),
            row_format)


def decode_proto_inputs(inputs: Mapping[str, Any], signature: Signature,
                        max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> dict[str, np.ndarray]:
    """PredictRequest.inputs (TensorProtos) -> arrays; the dtype must match exactly, as in TF
    Serving (it does not convert), and the declared shapes must fit the signature, the content
    and `max_bytes` (check_proto_size) before any array is made."""
    for name, proto in inputs.items():
        spec = signature.inputs.get(name)
        if spec is not None and proto.dtype != spec.dtype.as_datatype_enum:
            got = (tf.dtypes.as_dtype(proto.dtype).name if proto.dtype in _DATATYPES
                   else "no dtype" if not proto.dtype else f"unknown dtype {proto.dtype}")
            raise RequestError(f"input {name!r} expects {spec.dtype.name}, got {got}")
        if spec is not None:  # an unknown name is reported by check_inputs, never decoded
            check_proto_size(name, proto, spec, max_bytes)
    arrays = {}
    for name, proto in inputs.items():
        if name not in signature.inputs:
            arrays[name] = np.zeros(0)
            continue
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise RequestError(f"input {name!r}: malformed TensorProto ({error})") from None
    return arrays


def to_json_value(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            array).tolist() if array.size else array.tolist()
    return array.tolist()


def rest_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's response: one output -> its values, several -> named."""
    if row_format:
        if len(outputs) == 1:
            return {"predictions": to_json_value(next(iter(outputs.values())))}
        rows = len(next(iter(outputs.values())))
        values = {name: to_json_value(v) for name, v in outputs.items()}
        return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(rows)]}
    if len(outputs) == 1:
        return {"outputs": to_json_value(next(iter(outputs.values())))}
    return {"outputs": {name: to_json_value(v) for name, v in outputs.items()}}


# --- the model repository: polls the base path, holds the newest version -------------------------
def numbered_versions(base_path: str) -> list[int]:
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if VERSION_PATTERN.match(n)
                  and os.path.exists(os.path.join(base_path, n, "saved_model.pb")))


def directory_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under `path`: changes when its files do."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError:  # removed while walking
                continue
            entries.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


class ModelRepository:
    """Serves the newest numbered version under `base_path` and swaps in newer ones."""

    def __init__(self, model_name: str, base_path: str):
        self.model_name = model_name
        self.base_path = base_path
        self._current: ServedVersion | None = None
        # version -> fingerprint of its files when it failed to load: retried once they change
        self._failed: dict[int, tuple] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> ServedVersion | None:
        return self._current

    @property
    def failed_versions(self) -> frozenset[int]:
        """Versions that failed to load and whose files have not changed since (a version is
        retried when they do, e.g. a broken export fixed in place)."""
        return frozenset(self._failed)

    def _unchanged_failure(self, version: int) -> bool:
        if version not in self._failed:
            return False
        path = os.path.join(self.base_path, str(version))
        if directory_fingerprint(path) == self._failed[version]:
            return True
        del self._failed[version]
        LOG.info("the files of %s changed since it failed to load: trying it again", path)
        return False

    def poll(self) -> bool:
        """Loads the newest version if it is not the one served; True when it swapped one in."""
        versions = [v for v in numbered_versions(self.base_path)
                    if not self._unchanged_failure(v)]
        current = self._current
        if not versions or (current is not None and versions[-1] == current.version):
            return False
        version = versions[-1]
        path = os.path.join(self.base_path, str(version))
        started = time.perf_counter()
        fingerprint = directory_fingerprint(path)  # before loading: a change meanwhile retries
        try:
            loaded = ServedVersion(path, version)
            warmed = loaded.warm_up()
        except Exception:  # a broken export must not take the server down
            LOG.exception("could not load %s; still serving version %s", path,
                          current.version if current else None)
            self._failed[version] = fingerprint
            return False
        with self._lock:
            self._current = loaded
        LOG.info("serving %s version %d (loaded in %.1f s, %d warmup requests)",
                 self.model_name, version, time.perf_counter() - started, warmed)
        return True

    def get(self, model_name: str, version: int | None = None) -> ServedVersion:
        if model_name != self.model_name:
            raise not_found(f"Servable not found for request: model {model_name!r} (this server "
                            f"serves {self.model_name!r})")
        current = self._current
        if current is None:
            raise not_found(f"Could not find any versions of model {model_name} (none loaded yet "
                            f"from {self.base_path})")
        if version is not None and version != current.version:
            raise not_found(f"Servable not found for request: Specific({model_name}, {version}); "
                            f"the loaded version is {current.version}")
        return current


# --- REST -----------------------------------------------------------------------------------------
_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_MODEL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                    r"(?P<metadata>/metadata)?$")


def status_json(version: ServedVersion) -> dict:
    return {"model_version_status": [{"version": str(version.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def metadata_json(model_name: str, version: ServedVersion) -> dict:
    return {"model_spec": {"name": model_name, "signature_name": "",
                           "version": str(version.version)},
            "metadata": {"signature_def": json_format.MessageToDict(
                version.signature_defs, preserving_proto_field_name=True)}}


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One connection, on its own thread (RestServer): an idle kept-alive connection ties no
    worker that another client needs, and is closed after --rest_api_idle_timeout_seconds."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    disable_nagle_algorithm = True  # headers and body are two writes: don't wait for an ACK
    server: "RestServer"

    def setup(self):
        # The socket timeout while waiting for a request line or headers: an idle connection
        # (or one that stalls mid-headers) is closed after it (handle_one_request catches it).
        self.timeout = self.server.limits.idle_timeout
        super().setup()
        self.server.opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def log_message(self, format, *args):  # requests are logged at DEBUG, not on stderr
        LOG.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        try:
            self._reply(200, self._route(method))
        except RequestError as error:
            self._reply(error.http_status, {"error": error.message})
        except Exception as error:  # an unexpected failure is a 500, and the server goes on
            LOG.exception("internal error on %s %s", method, self.path)
            self._reply(500, {"error": f"internal error: {error}"})

    def _route(self, method: str) -> dict:
        repository = self.server.repository
        if method == "POST":
            match = _PREDICT.match(self.path)
            body = self._read_json()  # read before any error, so keep-alive stays in sync
            if not match:
                raise not_found(f"Malformed request: POST {self.path}")
            version = int(match["version"]) if match["version"] else None
            served = repository.get(match["name"], version)
            signature_name, tensors, row_format = rest_request(
                body, served, self.server.limits.max_scored_rows)
            with self.server.model_slots:
                outputs = served.run(signature_name, tensors)
            return rest_response(outputs, row_format)
        match = _MODEL.match(self.path)
        if not match:
            raise not_found(f"Malformed request: GET {self.path}")
        served = repository.get(match["name"], int(match["version"]) if match["version"] else None)
        if match["metadata"]:
            return metadata_json(match["name"], served)
        return status_json(served)

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("a request body with a Content-Length header is required", 411)
        length = int(length)
        if length > self.server.limits.max_request_bytes:
            self._discard(length)
            raise self._too_large(length)
        data = self._read_body(length)
        try:
            body = json.loads(data)
        except RecursionError:
            raise RequestError("the request body is nested too deeply") from None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
            raise RequestError(f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def _read_body(self, length: int) -> bytes:
        """The body's `length` bytes, or a 400 (and the connection closed) when the client sends
        fewer: at the end of its stream, or when nothing more arrives for
        --rest_api_body_timeout_seconds (a client that declared more than it sends)."""
        timeout = self.server.limits.body_timeout
        self.connection.settimeout(timeout)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = None
        finally:
            self.connection.settimeout(self.server.limits.idle_timeout)
        if data is None or len(data) < length:
            self.close_connection = True
            detail = (f"nothing more arrived for {timeout:g} s" if data is None
                      else f"{len(data)} arrived, then the stream ended")
            raise RequestError(f"the request body is shorter than its Content-Length of {length} "
                               f"bytes ({detail})")
        return data

    def _too_large(self, length: int) -> RequestError:
        return RequestError(f"request of {length} bytes is larger than the server's limit of "
                            f"{self.server.limits.max_request_bytes} bytes (--max_request_bytes)",
                            413, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def _discard(self, length: int) -> None:
        """Reads and drops an oversized body so that the client, still sending it, gets the 413
        instead of a broken pipe; past a bound the connection is just closed."""
        if length > DISCARD_FACTOR * self.server.limits.max_request_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def handle_expect_100(self) -> bool:
        # Clients that ask first (curl does for large bodies) learn the limit before sending.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.limits.max_request_bytes:
            self.close_connection = True
            self._reply(413, {"error": self._too_large(int(length)).message})
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (the flags of the same names)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_scored_rows: int = DEFAULT_MAX_SCORED_ROWS     # --max_candidates_per_request
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS  # --rest_api_idle_timeout_seconds
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS  # --rest_api_body_timeout_seconds


class RestServer(http.server.ThreadingHTTPServer):
    """HTTP server with one thread per connection (the standard library's ThreadingMixIn), so a
    connection that sits idle holds only its own thread, until the idle timeout closes it; at
    most --rest_api_num_threads requests run the model at once."""

    daemon_threads = True

    def __init__(self, address, repository: ModelRepository, limits: Limits, num_threads: int):
        self.repository = repository
        self.limits = limits
        self.model_slots = threading.BoundedSemaphore(num_threads)
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, RestHandler)  # binds; closes itself when that fails

    def opened(self, connection) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def server_close(self):
        """Stops listening and ends the open connections (their threads then exit) rather than
        leaving them to the idle timeout."""
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed by its thread meanwhile
                pass


# --- gRPC -----------------------------------------------------------------------------------------
def _grpc_call(context, fn):
    try:
        return fn()
    except RequestError as error:
        context.abort(error.grpc_code, error.message)
    except Exception as error:
        LOG.exception("internal error in a gRPC call")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, limits: Limits = Limits()):
        self.repository = repository
        self.limits = limits

    def _served(self, model_spec) -> ServedVersion:
        version = model_spec.version.value if model_spec.HasField("version") else None
        if model_spec.WhichOneof("version_choice") == "version_label":
            raise RequestError("version labels are not supported by the local server")
        return self.repository.get(model_spec.name, version)

    def Predict(self, request, context):
        def run():
            served = self._served(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            arrays = decode_proto_inputs(request.inputs, served.signature(name),
                                         self.limits.max_request_bytes)
            outputs = served.predict(name, arrays, self.limits.max_scored_rows)
            if request.output_filter:
                unknown = sorted(set(request.output_filter) - set(outputs))
                if unknown:
                    raise RequestError(f"output_filter names unknown outputs {unknown}")
                outputs = {k: v for k, v in outputs.items() if k in request.output_filter}
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = served.version
            response.model_spec.signature_name = name
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response
        return _grpc_call(context, run)

    def GetModelMetadata(self, request, context):
        def run():
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError("metadata_field must be [\"signature_def\"], got "
                                   f"{list(request.metadata_field)}")
            served = self._served(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = served.version
            response.metadata["signature_def"].Pack(served.signature_defs)
            return response
        return _grpc_call(context, run)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        def run():
            spec = request.model_spec
            served = self.repository.get(spec.name, spec.version.value
                                         if spec.HasField("version") else None)
            response = get_model_status_pb2.GetModelStatusResponse()
            status = response.model_version_status.add()
            status.version = served.version
            status.state = AVAILABLE
            return response
        return _grpc_call(context, run)


# --- the server -----------------------------------------------------------------------------------
class LocalServer:
    """The REST and gRPC front ends on one ModelRepository, plus the polling thread.

    Port 0 picks a free port (read `rest_port` / `grpc_port` after `start()`); None disables that
    front end. Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, model_name: str, model_base_path: str, *, host: str = "127.0.0.1",
                 rest_api_port: int | None = 8501, grpc_port: int | None = 8500,
                 poll_seconds: float = 1.0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 rest_api_num_threads: int = 8, grpc_max_threads: int = 8,
                 max_candidates_per_request: int = DEFAULT_MAX_SCORED_ROWS,
                 idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
                 body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS):
        if rest_api_port is None and grpc_port is None:
            raise ValueError("at least one of the REST and gRPC ports must be set")
        self.repository = ModelRepository(model_name, model_base_path)
        self.host = host
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._rest = None
        self._grpc = None
        self.rest_port = self.grpc_port = None
        self._requested = (rest_api_port, grpc_port)
        self.limits = Limits(max_request_bytes, max_candidates_per_request,
                             idle_timeout_seconds, body_timeout_seconds)
        self._threads_per_front_end = (rest_api_num_threads, grpc_max_threads)
        self._threads: list[threading.Thread] = []

    def start(self) -> "LocalServer":
        rest_api_port, grpc_port = self._requested
        rest_threads, grpc_threads = self._threads_per_front_end
        max_request_bytes = self.limits.max_request_bytes
        self.repository.poll()  # serve a version from the first request on, when there is one
        try:
            if rest_api_port is not None:
                self._rest = RestServer((self.host, rest_api_port), self.repository,
                                        self.limits, rest_threads)
                self.rest_port = self._rest.server_address[1]
                self._spawn(self._rest.serve_forever, "rest")
            if grpc_port is not None:
                self._grpc = grpc.server(
                    concurrent.futures.ThreadPoolExecutor(grpc_threads, "grpc"),
                    options=[("grpc.max_receive_message_length", max_request_bytes),
                             ("grpc.so_reuseport", 0)])  # a port in use is an error
                prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                    PredictionService(self.repository, self.limits), self._grpc)
                model_service_pb2_grpc.add_ModelServiceServicer_to_server(
                    ModelService(self.repository), self._grpc)
                self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{grpc_port}")
                if not self.grpc_port:
                    raise OSError(f"could not listen for gRPC on {self.host}:{grpc_port}")
                self._grpc.start()
        except BaseException:
            self.stop()  # the REST front end may already be listening
            raise
        self._spawn(self._poll_forever, "poll")
        return self

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_forever(self):
        while not self._stop.wait(self.poll_seconds):
            self.repository.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Development stand-in for TF Serving (NOT for production: use the "
                    "tensorflow/serving image). Serves the newest version under "
                    "--model_base_path over REST and gRPC with TF Serving's API.")
    parser.add_argument("--model_name", required=True, help="name in request URLs / model_spec")
    parser.add_argument("--model_base_path", required=True,
                        help="directory of numbered version directories, e.g. export/queryrec")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument("--rest_api_port", type=int, default=8501,
                        help="REST port (default 8501); 0 disables REST, as in TF Serving")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; not a "
                             "TF Serving flag)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="how often to look for a new version (default 1)")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"largest request accepted (default {DEFAULT_MAX_REQUEST_BYTES})")
    parser.add_argument("--rest_api_num_threads", type=int, default=8,
                        help="REST requests that run the model at once (default 8); every "
                             "connection has its own thread")
    parser.add_argument("--grpc_max_threads", type=int, default=8)
    parser.add_argument("--max_candidates_per_request", type=int,
                        default=DEFAULT_MAX_SCORED_ROWS,
                        help="most rows one request may score: users x candidates for "
                             "score_candidates, the batch for the others (default "
                             f"{DEFAULT_MAX_SCORED_ROWS}; not a TF Serving flag)")
    parser.add_argument("--rest_api_idle_timeout_seconds", type=float,
                        default=DEFAULT_IDLE_TIMEOUT_SECONDS,
                        help="a kept-alive REST connection without a request for this long is "
                             f"closed (default {DEFAULT_IDLE_TIMEOUT_SECONDS:g})")
    parser.add_argument("--rest_api_body_timeout_seconds", type=float,
                        default=DEFAULT_BODY_TIMEOUT_SECONDS,
                        help="a request body that stops arriving for this long is answered 400 "
                             f"(default {DEFAULT_BODY_TIMEOUT_SECONDS:g})")
    args = parser.parse_args(argv)
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) < 65536:
            parser.error(f"--{flag} must be a port number in [0, 65535]")
    if args.port == 0:
        parser.error("--port must be a port number (gRPC cannot be disabled)")
    if args.port == args.rest_api_port:
        parser.error("--port and --rest_api_port must differ")
    for flag in ("file_system_poll_wait_seconds", "max_request_bytes", "rest_api_num_threads",
                 "grpc_max_threads", "max_candidates_per_request",
                 "rest_api_idle_timeout_seconds", "rest_api_body_timeout_seconds"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive")
    if not os.path.isdir(args.model_base_path):
        parser.error(f"--model_base_path {args.model_base_path!r} is not a directory (export a "
                     "model with `python -m qrec_tf.export --output DIR`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    LOG.warning("development stand-in for TF Serving; use the tensorflow/serving image in "
                "production")
    server = LocalServer(args.model_name, args.model_base_path, host=args.host,
                         rest_api_port=args.rest_api_port or None, grpc_port=args.port,
                         poll_seconds=args.file_system_poll_wait_seconds,
                         max_request_bytes=args.max_request_bytes,
                         rest_api_num_threads=args.rest_api_num_threads,
                         grpc_max_threads=args.grpc_max_threads,
                         max_candidates_per_request=args.max_candidates_per_request,
                         idle_timeout_seconds=args.rest_api_idle_timeout_seconds,
                         body_timeout_seconds=args.rest_api_body_timeout_seconds)
    try:
        server.start()
    except (OSError, RuntimeError) as error:  # grpc raises RuntimeError when it cannot bind
        parser.error(f"cannot listen: {error}")
    if server.repository.current is None:
        LOG.warning("no version under %s yet; waiting for one", args.model_base_path)
    if server.rest_port:
        LOG.info("REST on http://%s:%d/v1/models/%s", args.host, server.rest_port,
                 args.model_name)
    LOG.info("gRPC on %s:%d", args.host, server.grpc_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    LOG.info("stopping")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
