"""Property-based tests (Hypothesis) of the local server's request validation: any JSON in gives
either input tensors that fit the signature exactly or a 400 with a message, never another
error; over HTTP, any body gets 200 or a 4xx with {"error": ...}, never a 500.

Example counts are bounded so that `make test` stays within its time; no example database is
written into the repository (database=None)."""

import base64
import http.client
import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrec_tf import export
from serving import local_server
from tests.serving.conftest import MAX_CANDIDATES, TIMEOUT
from tests.serving.test_local_server import predict_path

FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_HTTP = settings(FUZZ, max_examples=25)

# Any JSON value (json.loads gives these types; floats include NaN and infinities, which Python's
# json reads too).
scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=24)


def leaves_for(dtype: tf.DType) -> st.SearchStrategy:
    """Mostly leaves of the input's own JSON kind, sometimes anything."""
    if dtype == tf.string:
        own = st.text(max_size=4) | st.binary(max_size=4).map(
            lambda b: {"b64": base64.b64encode(b).decode()})
    elif dtype.is_integer:
        own = st.integers(-2 ** 63 - 2, 2 ** 63 + 1)
    else:
        own = st.floats(allow_nan=False, width=32)
    return st.one_of(own, own, own, scalars)


@st.composite
def near_valid_bodies(draw, signatures: dict) -> dict:
    """Requests close to valid ones: the signature's inputs with about the right shapes and
    kinds, some inputs dropped, renamed, reshaped, or of another size on axis 0."""
    name = draw(st.sampled_from(sorted(signatures)))
    specs = signatures[name].inputs
    batch = draw(st.integers(0, 3))
    inner = draw(st.integers(0, 3))  # score_candidates' N
    columns = {}
    for input_name, spec in sorted(specs.items()):
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing input
        dims = [batch if i == 0 else inner if d is None else d
                for i, d in enumerate(spec.shape.as_list())]
        if draw(st.integers(0, 9)) == 0:
            dims = draw(st.lists(st.integers(0, 3), max_size=3))  # another shape
        # A few drawn leaves repeated to fill the shape: a [3, 20, 8] input draws 1-3 leaves,
        # not 480, which keeps the examples cheap.
        drawn = draw(st.lists(leaves_for(spec.dtype), min_size=1, max_size=3))
        count = int(np.prod(dims, dtype=np.int64))
        values = np.empty(count, dtype=object)
        values[:] = [drawn[i % len(drawn)] for i in range(count)]
        columns[input_name] = values.reshape(dims).tolist() if dims else drawn[0]
    if draw(st.integers(0, 19)) == 0:
        columns[draw(st.text(max_size=6))] = draw(json_values)  # an unknown input
    body = {}
    if draw(st.booleans()):
        body["signature_name"] = draw(st.sampled_from([name, name, "", "nope", 0, None]))
    elif name != export.SERVING_DEFAULT:
        body["signature_name"] = name
    if batch and draw(st.booleans()) and all(
            isinstance(v, list) and len(v) == batch for v in columns.values()):
        body["instances"] = [{k: v[i] for k, v in columns.items()} for i in range(batch)]
    else:
        body["inputs"] = columns
    return body


def check_property(body, served) -> None:
    """Either tensors that fit the signature exactly, or a 400 RequestError with a message."""
    try:
        name, tensors, _ = local_server.rest_request(body, served, MAX_CANDIDATES)
    except local_server.RequestError as error:
        assert error.http_status == 400 and error.message.strip(), error.message
        return
    specs = served.signatures[name].inputs
    assert set(tensors) == set(specs)
    sizes = set()
    for input_name, spec in specs.items():
        tensor = tensors[input_name]
        assert tensor.dtype == spec.dtype, input_name
        assert spec.shape.is_compatible_with(tensor.shape), (input_name, tensor.shape)
        sizes.add(int(tensor.shape[0]))
    assert len(sizes) == 1  # one batch size


@pytest.fixture(scope="module")
def served(server):
    return server.repository.current


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["signature_name", "inputs", "instances", "x"]),
                            json_values, max_size=3))
def test_any_json_object_gives_fitting_tensors_or_a_400(served, body):
    check_property(body, served)


@FUZZ
@given(data=st.data())
def test_near_valid_requests_give_fitting_tensors_or_a_400(served, data):
    check_property(data.draw(near_valid_bodies(served.signatures)), served)


def post(server, raw: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=TIMEOUT)
    try:
        connection.request("POST", predict_path(), body=raw,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@FUZZ_HTTP
@given(data=st.data())
def test_any_body_over_http_is_answered_200_or_400_never_500(server, served, data):
    kind = data.draw(st.sampled_from(["near-valid", "json", "bytes"]))
    if kind == "near-valid":
        raw = json.dumps(data.draw(near_valid_bodies(served.signatures))).encode()
    elif kind == "json":
        raw = json.dumps(data.draw(json_values)).encode()
    else:
        raw = data.draw(st.binary(max_size=64))
    status, answer = post(server, raw)
    if status == 200:
        outputs = answer.get("outputs", answer.get("predictions"))
        assert np.isfinite(np.asarray(outputs, dtype=np.float64)).all()
    else:
        assert status == 400, (status, answer)
        assert set(answer) == {"error"} and answer["error"].strip()


def test_examples_that_are_not_tf_examples_are_a_400(server):
    """Found by the property above: one byte 0x80 as a serialized example made TensorFlow's error
    message undecodable, and the server answered 500."""
    body = {"signature_name": "from_examples", "inputs": {"examples": [{"b64": "gA=="}]}}
    status, answer = post(server, json.dumps(body).encode())
    assert status == 400, (status, answer)
    assert "could not be parsed" in answer["error"] or "examples" in answer["error"]
