"""The gRPC front end: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
tensorflow.serving.ModelService (GetModelStatus); bad input is INVALID_ARGUMENT."""

from __future__ import annotations

import logging

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.local_server.validation import (
    DEFAULT_SIGNATURE,
    Limits,
    RequestError,
    decode_proto_inputs,
)
from serving.local_server.versions import ModelRepository, ServedVersion

LOG = logging.getLogger("serving.local_server")

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


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
