"""The local TF Serving stand-in, spoken to in TF Serving's raw protocol (JSON over HTTP, gRPC
stubs): the same scores as in-process calls in every request format, status and metadata, clear
errors for malformed requests with the server answering the next good one, new versions picked
up, a broken version skipped, and the CLI."""

import base64
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from qrec_tf import export
from qrec_tf import schema as S
from serving import local_server
from serving.local_server import LocalServer
from tests.serving.conftest import MAX_REQUEST_BYTES, TIMEOUT, in_process, wait_for
from tests.serving.tiny_model import MODEL_NAME


def rest(server, method, path, body=None, raw: bytes | None = None, headers=None):
    """-> (HTTP status, parsed JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def predict_path(version=None):
    return f"/v1/models/{MODEL_NAME}" + (f"/versions/{version}" if version else "") + ":predict"


def jsonable(array):
    array = np.asarray(array)
    if array.dtype == object:
        return np.vectorize(lambda v: v.decode(), otypes=[object])(array).tolist()
    return array.tolist()


def columnar(features):
    return {name: jsonable(value) for name, value in features.items()}


def instances(features):
    n = len(next(iter(features.values())))
    return [{name: jsonable(value[i]) for name, value in features.items()} for i in range(n)]


@pytest.fixture(scope="module")
def grpc_stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def grpc_request(features, signature=export.SERVING_DEFAULT, model_name=MODEL_NAME):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in features.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(
            value, dtype=tf.string if value.dtype == object else None))
    return request


def good_rest_request(server, rows, model):
    status, body = rest(server, "POST", predict_path(), {"inputs": columnar(rows[0])})
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"], in_process(model, rows[0]), atol=1e-5)


# --- scores --------------------------------------------------------------------------------
def test_rest_scores_equal_in_process_scores_in_every_format(server, rows, model):
    features, serialized = rows
    expected = in_process(model, features)
    for body in ({"instances": instances(features)},
                 {"signature_name": export.SERVING_DEFAULT, "inputs": columnar(features)}):
        status, answer = rest(server, "POST", predict_path(), body)
        assert status == 200, answer
        scores = answer.get("predictions", answer.get("outputs"))
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert len(scores) == len(expected)

    examples = [{"b64": base64.b64encode(s).decode()} for s in serialized]
    for body in ({"signature_name": export.FROM_EXAMPLES, "instances": examples},
                 {"signature_name": export.FROM_EXAMPLES,
                  "inputs": {export.EXAMPLES_KEY: examples}}):
        status, answer = rest(server, "POST", predict_path(1), body)
        assert status == 200, answer
        np.testing.assert_allclose(answer.get("predictions", answer.get("outputs")), expected,
                                   atol=1e-5)

    request = export.candidate_request(features, model.schema)
    want = in_process(model, export.candidate_rows(features, model.schema))
    for body in ({"signature_name": export.SCORE_CANDIDATES, "inputs": columnar(request)},
                 {"signature_name": export.SCORE_CANDIDATES, "instances": instances(request)}):
        status, answer = rest(server, "POST", predict_path(), body)
        assert status == 200, answer
        scores = np.array(answer.get("predictions", answer.get("outputs")))
        assert scores.shape == (1, len(want))
        np.testing.assert_allclose(scores[0], want, atol=1e-5)


def test_grpc_scores_equal_in_process_scores(server, grpc_stubs, rows, model):
    predict, _ = grpc_stubs
    features, serialized = rows
    expected = in_process(model, features)
    response = predict.Predict(grpc_request(features), timeout=TIMEOUT)
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == export.SERVING_DEFAULT
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[export.OUTPUT_KEY]), expected,
                               atol=1e-5)
    request = grpc_request({export.EXAMPLES_KEY: serialized}, export.FROM_EXAMPLES)
    response = predict.Predict(request, timeout=TIMEOUT)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[export.OUTPUT_KEY]), expected,
                               atol=1e-5)
    response = predict.Predict(grpc_request(export.candidate_request(features, model.schema),
                                            export.SCORE_CANDIDATES), timeout=TIMEOUT)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[export.OUTPUT_KEY])[0],
                               in_process(model, export.candidate_rows(features, model.schema)),
                               atol=1e-5)


# --- status and metadata ---------------------------------------------------------------------
def test_status_and_metadata_over_rest_and_grpc(server, grpc_stubs, model):
    status, body = rest(server, "GET", f"/v1/models/{MODEL_NAME}")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK",
                                                         "error_message": ""}}]}
    assert rest(server, "GET", f"/v1/models/{MODEL_NAME}/versions/1")[0] == 200

    status, body = rest(server, "GET", f"/v1/models/{MODEL_NAME}/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(export.SIGNATURES) <= set(defs)
    inputs = defs[export.SERVING_DEFAULT]["inputs"]
    assert {name: spec["dtype"] for name, spec in inputs.items()} == {
        f.name: "DT_INT64" if f.dtype == "int64" else "DT_STRING"
        for f in model.schema.model_features}

    predict, models = grpc_stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = predict.GetModelMetadata(request, timeout=TIMEOUT)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    assert set(signature_defs.signature_def[export.SCORE_CANDIDATES].inputs) == (
        set(export.score_candidates_specs(model.schema)))
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    statuses = models.GetModelStatus(status_request, timeout=TIMEOUT).model_version_status
    assert [(s.version, s.state) for s in statuses] == [(1, local_server.AVAILABLE)]


# --- malformed requests ------------------------------------------------------------------------
def _rest_cases(features, request):
    as_floats = columnar(features)
    as_floats[S.ITEM_ID] = [v + 0.5 for v in as_floats[S.ITEM_ID]]
    as_strings = columnar(features)
    as_strings[S.USER_ID] = [str(v) for v in as_strings[S.USER_ID]]
    missing = columnar(features)
    del missing[S.HIST_ITEM_IDS]
    unknown = {**columnar(features), "colour": [1] * len(features[S.USER_ID])}
    wrong_rank = columnar(features)
    wrong_rank[S.HIST_ITEM_IDS] = wrong_rank[S.HIST_ITEM_IDS][0]
    wrong_length = columnar(features)
    wrong_length[S.HIST_ITEM_IDS] = [row[:-1] for row in wrong_length[S.HIST_ITEM_IDS]]
    ragged = columnar(features)
    ragged[S.HIST_ITEM_IDS][0] = ragged[S.HIST_ITEM_IDS][0][:-1]
    uneven = columnar(features)
    uneven[S.USER_ID] = uneven[S.USER_ID][:-1]
    numbers_for_strings = columnar(features)
    numbers_for_strings[S.QUERY_KEYS] = [[7] * len(r) for r in numbers_for_strings[S.QUERY_KEYS]]
    bad_candidates = columnar(request)
    bad_candidates[export.candidate_input_name(S.AUTHOR_ID)] = [
        bad_candidates[export.candidate_input_name(S.AUTHOR_ID)][0][:-1]]
    rows_mixed = instances(features)
    del rows_mixed[1][S.USER_ID]
    return [
        ("float for int64", 400, predict_path(), {"inputs": as_floats}, [S.ITEM_ID, "int64"]),
        ("string for int64", 400, predict_path(), {"inputs": as_strings}, [S.USER_ID, "int64"]),
        ("number for string", 400, predict_path(), {"inputs": numbers_for_strings},
         [S.QUERY_KEYS, "strings"]),
        ("missing input", 400, predict_path(), {"inputs": missing}, [S.HIST_ITEM_IDS, "missing"]),
        ("unknown input", 400, predict_path(), {"inputs": unknown}, ["colour", "unknown"]),
        ("wrong rank", 400, predict_path(), {"inputs": wrong_rank},
         [S.HIST_ITEM_IDS, "rank 2"]),
        ("wrong length", 400, predict_path(), {"inputs": wrong_length},
         [S.HIST_ITEM_IDS, "shape"]),
        ("ragged", 400, predict_path(), {"inputs": ragged}, [S.HIST_ITEM_IDS, "ragged"]),
        ("batch sizes differ", 400, predict_path(), {"inputs": uneven}, ["axis 0"]),
        ("instances differ", 400, predict_path(), {"instances": rows_mixed}, ["same named"]),
        ("candidate shapes differ", 400, predict_path(),
         {"signature_name": export.SCORE_CANDIDATES, "inputs": bad_candidates},
         [export.candidate_input_name(S.AUTHOR_ID)]),
        ("both formats", 400, predict_path(), {"inputs": {}, "instances": []}, ["exactly one"]),
        ("unknown signature", 400, predict_path(),
         {"signature_name": "nope", "inputs": columnar(features)}, ["nope", "signature"]),
        ("unknown model", 404, "/v1/models/nope:predict", {"inputs": columnar(features)},
         ["nope"]),
        ("unknown version", 404, predict_path(7), {"inputs": columnar(features)}, ["7"]),
        ("unknown url", 404, "/v2/whatever", {}, ["Malformed request"]),
    ]


def test_malformed_rest_requests_get_a_clear_error_and_the_server_goes_on(server, rows, model):
    features, _ = rows
    cases = _rest_cases(features, export.candidate_request(features, model.schema))
    for label, want_status, path, body, words in cases:
        status, answer = rest(server, "POST", path, body)
        assert status == want_status, (label, answer)
        assert set(answer) == {"error"}, label
        for word in words:
            assert word in answer["error"], (label, answer["error"])
        good_rest_request(server, rows, model)

    status, answer = rest(server, "POST", predict_path(), raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = rest(server, "POST", predict_path(), raw=b"[1, 2]")
    assert status == 400 and "JSON object" in answer["error"]
    huge = json.dumps({"inputs": {S.USER_ID: [1] * (MAX_REQUEST_BYTES // 3)}}).encode()
    assert len(huge) > MAX_REQUEST_BYTES
    status, answer = rest(server, "POST", predict_path(), raw=huge)
    assert status == 413 and str(MAX_REQUEST_BYTES) in answer["error"]
    good_rest_request(server, rows, model)
    status, answer = rest(server, "GET", "/v1/models/nope/metadata")
    assert status == 404 and "nope" in answer["error"]


def test_malformed_grpc_requests_get_a_clear_error_and_the_server_goes_on(
        server, grpc_stubs, rows, model):
    predict, _ = grpc_stubs
    features, _ = rows
    good = grpc_request(features)
    as_int32 = grpc_request({**features, S.ITEM_ID: features[S.ITEM_ID].astype(np.int32)})
    missing = grpc_request({k: v for k, v in features.items() if k != S.QUERY_KEYS})
    wrong_rank = grpc_request({**features, S.HIST_ITEM_IDS: features[S.HIST_ITEM_IDS][0]})
    unknown_model = grpc_request(features, model_name="nope")
    unknown_signature = grpc_request(features, "nope")
    huge = grpc_request({**features, "padding": np.zeros(MAX_REQUEST_BYTES // 4, np.int64)})
    cases = [
        ("wrong dtype", as_int32, grpc.StatusCode.INVALID_ARGUMENT, [S.ITEM_ID, "int64", "int32"]),
        ("missing input", missing, grpc.StatusCode.INVALID_ARGUMENT, [S.QUERY_KEYS, "missing"]),
        ("wrong rank", wrong_rank, grpc.StatusCode.INVALID_ARGUMENT, [S.HIST_ITEM_IDS, "rank"]),
        ("unknown model", unknown_model, grpc.StatusCode.NOT_FOUND, ["nope"]),
        ("unknown signature", unknown_signature, grpc.StatusCode.INVALID_ARGUMENT, ["nope"]),
        ("huge payload", huge, grpc.StatusCode.RESOURCE_EXHAUSTED, ["larger than"]),
    ]
    expected = in_process(model, features)
    for label, request, code, words in cases:
        with pytest.raises(grpc.RpcError) as info:
            predict.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == code, (label, info.value.details())
        for word in words:
            assert word in info.value.details(), (label, info.value.details())
        response = predict.Predict(good, timeout=TIMEOUT)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[export.OUTPUT_KEY]), expected,
                                   atol=1e-5)


# --- versions ----------------------------------------------------------------------------------
def served_version(server):
    status, body = rest(server, "GET", f"/v1/models/{MODEL_NAME}")
    return int(body["model_version_status"][0]["version"]) if status == 200 else None


def test_graph_error_text_keeps_an_asserts_message_and_data():
    raw = ("Graph execution error:\n\nassertion failed: [shapes do not fit (users, n); these do "
           "not:] [candidate_a candidate_b]\n\t [[{{function_node f}}{{node Assert/Assert}}]]")
    assert local_server.graph_error_text(raw) == (
        "shapes do not fit (users, n); these do not: candidate_a candidate_b")
    assert local_server.graph_error_text(
        "Graph execution error:\n\nDetected at node x\nindices[3] = 9 is not in [0, 4)\n"
        "\t [[{{node GatherV2}}]]") == "indices[3] = 9 is not in [0, 4)"


def test_a_new_version_is_picked_up_and_a_broken_one_is_skipped(tiny, tmp_path, rows, model):
    base = tmp_path / MODEL_NAME
    base.mkdir()
    with LocalServer(MODEL_NAME, str(base), rest_api_port=0, grpc_port=None,
                     poll_seconds=0.1) as server:
        status, body = rest(server, "GET", f"/v1/models/{MODEL_NAME}")
        assert status == 404 and "versions" in body["error"]  # nothing exported yet

        shutil.copytree(tiny.version_dir, base / ".staging")
        os.rename(base / ".staging", base / "3")  # how qrec_tf.export publishes a version
        assert wait_for(lambda: served_version(server) == 3)
        good_rest_request(server, rows, model)

        shutil.copytree(tiny.version_dir, base / ".staging")
        os.rename(base / ".staging", base / "4")
        assert wait_for(lambda: served_version(server) == 4)
        assert rest(server, "POST", predict_path(3), {"inputs": columnar(rows[0])})[0] == 404
        status, body = rest(server, "POST", predict_path(4), {"inputs": columnar(rows[0])})
        assert status == 200

        (base / "5").mkdir()
        (base / "5" / "saved_model.pb").write_bytes(b"not a SavedModel")
        assert wait_for(lambda: 5 in server.repository.failed_versions)
        assert served_version(server) == 4
        good_rest_request(server, rows, model)


# --- the command line --------------------------------------------------------------------------
def test_cli_flag_errors_exit_2_with_a_message(tmp_path, capsys):
    for argv, words in (
            (["--model_name", "m", "--model_base_path", str(tmp_path / "none")],
             "not a directory"),
            (["--model_name", "m", "--model_base_path", str(tmp_path), "--port", "9000",
              "--rest_api_port", "9000"], "must differ"),
            (["--model_name", "m", "--model_base_path", str(tmp_path), "--port", "70000"],
             "port number"),
            (["--model_name", "m", "--model_base_path", str(tmp_path),
              "--max_request_bytes", "0"], "positive")):
        with pytest.raises(SystemExit) as info:
            local_server.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "python -m serving.local_server: error:" in err and words in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for argv in (["--rest_api_port", port, "--port", str(free_port())],
                     ["--rest_api_port", "0", "--port", port]):
            with pytest.raises(SystemExit) as info:
                local_server.main(["--model_name", "m", "--model_base_path", str(tmp_path),
                                   *argv])
            assert info.value.code == 2 and "cannot listen" in capsys.readouterr().err


def test_no_log_handler_of_an_earlier_test_is_left_on_a_closed_stream():
    """The test above ran local_server.main to the point where it configures logging (a busy
    port), with its stderr captured: that handler must not outlive it (tests/conftest.py), or
    the session server's threads log into a closed stream."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        assert stream is None or not stream.closed, handler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_serves_with_tf_servings_flags_and_stops_on_sigterm(tiny, rows, model):
    rest_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", "--model_name", MODEL_NAME,
         "--model_base_path", tiny.base_path, "--rest_api_port", str(rest_port),
         "--port", str(grpc_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        class Ports:
            pass
        ports = Ports()
        ports.rest_port = rest_port

        def answers():
            try:
                return served_version(ports) == 1
            except OSError:
                return process.poll() is not None  # stop waiting if it died
        assert wait_for(answers, timeout=120) and process.poll() is None
        good_rest_request(ports, rows, model)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            grpc_request(rows[0]), timeout=TIMEOUT)
        channel.close()
        assert tf.make_ndarray(response.outputs[export.OUTPUT_KEY]).shape == (len(rows[1]),)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "development stand-in" in output and "serving queryrec version 1" in output
