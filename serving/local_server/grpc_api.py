"""The gRPC front end: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
tensorflow.serving.ModelService (GetModelStatus); bad input is INVALID_ARGUMENT. A model_spec
names a version by number, by `version_label` (models.config's version_labels) or neither (the
newest). Predict's outputs are filled in their typed value fields (`float_val` for the float32
`ctr`), as TF Serving's default response format (ServerCore's kAsProtoField) does."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.local_server.batching import Batcher
from serving.local_server.metrics import Metrics
from serving.local_server.validation import (
    DEFAULT_SIGNATURE,
    Limits,
    RequestError,
    check_inputs,
    decode_proto_inputs,
)
from serving.local_server.versions import ModelRepository, ServedVersion

LOG = logging.getLogger("serving.local_server")

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


# numpy dtype -> the TensorProto field TF's Tensor::AsProtoField fills
_PROTO_FIELDS = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
                 np.dtype(np.int32): "int_val", np.dtype(np.int64): "int64_val",
                 np.dtype(np.bool_): "bool_val"}


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """An output array -> a TensorProto with its values in the typed field (float_val for
    float32), as TF Serving answers; other dtypes fall back to tf.make_tensor_proto."""
    array = np.asarray(array)
    field = _PROTO_FIELDS.get(array.dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _grpc_call(context, fn, metrics: Metrics | None = None, api: str = "",
               model_spec=None):
    started = time.perf_counter()
    status = "OK"
    try:
        return fn()
    except RequestError as error:
        status = error.grpc_code.name
        context.abort(error.grpc_code, error.message)
    except Exception as error:
        status = "INTERNAL"
        LOG.exception("internal error in a gRPC call")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")
    finally:
        if metrics is not None and model_spec is not None:
            signature = model_spec.signature_name or (DEFAULT_SIGNATURE if api == "predict"
                                                      else "")
            metrics.record(model_spec.name, api, "GRPC", signature, status,
                           time.perf_counter() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, limits: Limits = Limits(),
                 metrics: Metrics | None = None, batcher: Batcher | None = None):
        self.repository = repository
        self.limits = limits
        self.metrics = metrics
        self.batcher = batcher

    def _served(self, model_spec) -> ServedVersion:
        return served_for(self.repository, model_spec)

    def Predict(self, request, context):
        def run():
            served = self._served(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            arrays = decode_proto_inputs(request.inputs, served.signature(name),
                                         self.limits.max_request_bytes)
            tensors = check_inputs(name, served.signature(name), arrays,
                                   self.limits.max_scored_rows)
            outputs = (self.batcher.run(served, name, tensors) if self.batcher is not None
                       else served.run(name, tensors))
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
                response.outputs[key].CopyFrom(as_proto_field(value))
            return response
        return _grpc_call(context, run, self.metrics, "predict", request.model_spec)

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
        return _grpc_call(context, run, self.metrics, "GetModelMetadata", request.model_spec)


def served_for(repository: ModelRepository, model_spec) -> ServedVersion:
    """The version a ModelSpec names: `version`, `version_label` or neither (the newest)."""
    choice = model_spec.WhichOneof("version_choice")
    return repository.get(model_spec.name,
                          model_spec.version.value if choice == "version" else None,
                          model_spec.version_label if choice == "version_label" else None)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository: ModelRepository, metrics: Metrics | None = None):
        self.repository = repository
        self.metrics = metrics

    def GetModelStatus(self, request, context):
        """Every loaded version when the spec names none (as TF Serving), else the one it names
        by number or label."""
        def run():
            spec = request.model_spec
            served = served_for(self.repository, spec)  # 404s as get() does
            versions = ([served.version] if spec.WhichOneof("version_choice")
                        else sorted(self.repository.loaded))
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in versions:
                status = response.model_version_status.add()
                status.version = version
                status.state = AVAILABLE
            return response
        return _grpc_call(context, run, self.metrics, "GetModelStatus", request.model_spec)
