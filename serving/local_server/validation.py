"""Request validation: every request is checked against the signature before TensorFlow runs.

Input names, dtypes, the JSON kind of every value, ranks, fixed dimensions, one batch size on
axis 0 across inputs and at most --max_candidates_per_request rows to score; a gRPC
TensorProto's declared shape is checked against its content and --max_request_bytes before any
array is made. A refused request is a RequestError with TF Serving's HTTP status and gRPC code.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from typing import TYPE_CHECKING, Any, Mapping

import grpc
import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from serving.local_server.versions import ServedVersion

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 16 << 20
DEFAULT_MAX_SCORED_ROWS = 10_000  # 200 candidates take ~7 ms (docs/RESULTS.md); 200,000 ~a minute
DEFAULT_IDLE_TIMEOUT_SECONDS = 30.0   # a kept-alive connection with no request is then closed
DEFAULT_BODY_TIMEOUT_SECONDS = 5.0    # a body must arrive within this after its headers
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0  # a request line and headers, from their first byte


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (the flags of the same names)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_scored_rows: int = DEFAULT_MAX_SCORED_ROWS     # --max_candidates_per_request
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS  # --rest_api_idle_timeout_seconds
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS  # --rest_api_body_timeout_seconds
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS  # --rest_api_header_timeout_seconds


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


@dataclasses.dataclass
class Signature:
    """A serving signature: its function and what it accepts."""

    function: Any
    inputs: dict[str, tf.TensorSpec]


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
