"""The local server against hostile or broken clients (issue 17): idle keep-alive connections do
not starve a new client, a gRPC request cannot make the server materialise more than the size
limit allows, malformed JSON in any shape is a 400 with a message, a broken version is retried
once its files change, and requests over the candidate cap are refused with a clear error."""

import json
import shutil
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from qrec_tf import export
from qrec_tf import schema as S
from serving import local_server
from serving.local_server import LocalServer
from tests.serving.conftest import MAX_CANDIDATES, MAX_REQUEST_BYTES, TIMEOUT
from tests.serving.test_local_server import (
    columnar,
    good_rest_request,
    grpc_request,
    predict_path,
    rest,
    served_version,
    wait_for,
)
from tests.serving.tiny_model import MODEL_NAME


def raw_exchange(port: int, data: bytes, half_close: bool = False) -> tuple[int, dict]:
    """Sends `data` on a fresh connection and reads one HTTP response: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")][0])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
        return int(head.split()[1]), json.loads(body)


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


# --- item 7: idle connections ---------------------------------------------------------------
def test_idle_keep_alive_connections_do_not_starve_a_new_client(tmp_path):
    """Sixteen connections that sent nothing sit idle while a new client asks: it is answered
    at once. With the old fixed pool of workers, each
    idle connection held a worker until its 30 s timeout: 16 idle over 2 workers kept the new
    client waiting ~4 minutes, past this test's TIMEOUT."""
    with LocalServer("m", str(tmp_path), rest_api_port=0, grpc_port=None,
                     rest_api_num_threads=2) as server:
        idle = [socket.create_connection(("127.0.0.1", server.rest_port), timeout=TIMEOUT)
                for _ in range(16)]
        try:
            status, body = rest(server, "GET", "/v1/models/m")
            assert status == 404 and "versions" in body["error"]
        finally:
            for sock in idle:
                sock.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path):
    with LocalServer("m", str(tmp_path), rest_api_port=0, grpc_port=None,
                     idle_timeout_seconds=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=TIMEOUT) as sock:
            assert sock.recv(1) == b""  # the server closed it (recv would time out otherwise)
        assert wait_for(lambda: server._rest.open_connections == 0)


def test_stopping_the_server_ends_its_open_connections(tmp_path):
    server = LocalServer("m", str(tmp_path), rest_api_port=0, grpc_port=None).start()
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=TIMEOUT)
    try:
        assert wait_for(lambda: server._rest.open_connections == 1)
        server.stop()
        assert sock.recv(1) == b""
    finally:
        sock.close()


# --- item 8: gRPC shapes checked before anything is materialised -------------------------------
def declared(dims: list[int], values: list[int]):
    """An int64 TensorProto that declares `dims` and holds `values` (int64_val)."""
    proto = tf.make_tensor_proto(0, tf.int64)
    proto.ClearField("int64_val")
    proto.int64_val.extend(values)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    return proto


def test_a_declared_shape_larger_than_the_content_or_the_limit_is_refused_unmaterialised(
        server, rows, monkeypatch):
    signature = server.repository.current.signature(export.SERVING_DEFAULT)
    made = []
    real = tf.make_ndarray
    monkeypatch.setattr(tf, "make_ndarray", lambda proto: made.append(proto) or real(proto))
    huge = {S.USER_ID: declared([30_000_000], [7])}  # 25 bytes that say 240 MB
    with pytest.raises(local_server.RequestError) as info:
        local_server.decode_proto_inputs(huge, signature, MAX_REQUEST_BYTES)
    assert info.value.http_status == 413
    assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "30000000" in info.value.message and S.USER_ID in info.value.message
    assert made == []
    for proto, words in (
            (declared([2], [1, 2, 3]), ["declares shape [2]", "holds 3"]),
            (declared([2, 3], [1]), ["must have shape [?]"]),
            (declared([-1], [1]), ["negative"])):
        with pytest.raises(local_server.RequestError) as info:
            local_server.decode_proto_inputs({S.USER_ID: proto}, signature, MAX_REQUEST_BYTES)
        assert info.value.http_status == 400
        assert all(word in info.value.message for word in words), info.value.message
    content = tf.make_tensor_proto(np.arange(3, dtype=np.int64))
    content.tensor_shape.dim[0].size = 4  # tensor_content of 3 values for a declared [4]
    with pytest.raises(local_server.RequestError, match="tensor_content holds 24 bytes"):
        local_server.decode_proto_inputs({S.USER_ID: content}, signature, MAX_REQUEST_BYTES)
    assert made == []
    # TF's own shorthand (fewer values than the shape: the last one repeats) within the limit.
    short = declared([3], [5])
    assert local_server.decode_proto_inputs({S.USER_ID: short}, signature,
                                            MAX_REQUEST_BYTES)[S.USER_ID].tolist() == [5, 5, 5]

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = grpc_request(rows[0])
        request.inputs[S.USER_ID].CopyFrom(huge[S.USER_ID])
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        assert "--max_request_bytes" in info.value.details()
    finally:
        channel.close()


# --- item 9: malformed JSON and bodies ----------------------------------------------------------
def test_json_nested_100000_deep_is_a_400(server):
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer = rest(server, "POST", predict_path(), raw=body)
    assert status == 400 and "nested too deeply" in answer["error"]
    # Deep, but within what json parses: deeper than the input's rank.
    deep = {"inputs": {S.USER_ID: [[[[1]]]], S.ITEM_ID: [1]}}
    status, answer = rest(server, "POST", predict_path(), deep)
    assert status == 400 and S.USER_ID in answer["error"] and "deeper" in answer["error"]
    status, answer = rest(server, "POST", predict_path(), raw=b'{"inputs": 1' + b"0" * 5000 + b"}")
    assert status == 400 and "not valid JSON" in answer["error"]


def test_a_body_shorter_than_its_content_length_is_a_400(server, rows, model):
    # The client keeps its connection open and sends nothing more: answered after the body
    # timeout (5 s by default), not the 30 s connection timeout, and with a 400.
    status, answer = raw_exchange(server.rest_port, post_head(predict_path(), 100) + b'{"in')
    assert status == 400, answer
    assert "shorter than its Content-Length of 100" in answer["error"]
    assert "did not arrive within" in answer["error"]
    # The client closes its side: answered at once.
    status, answer = raw_exchange(server.rest_port, post_head(predict_path(), 100) + b'{"in',
                                  half_close=True)
    assert status == 400 and "4 arrived" in answer["error"]
    good_rest_request(server, rows, model)


def test_values_of_the_wrong_json_kind_and_a_non_string_signature_name_are_400(server, rows):
    features, _ = rows
    for value, kind in ((True, "boolean"), (None, "null"), ({"a": 1}, "object"),
                        (1.0, "non-integer number"), ("7", "string")):
        inputs = columnar(features)
        inputs[S.USER_ID] = [value, *inputs[S.USER_ID][1:]]
        status, answer = rest(server, "POST", predict_path(), {"inputs": inputs})
        assert status == 400, (value, answer)
        assert S.USER_ID in answer["error"] and kind in answer["error"], answer["error"]
    for name in (0, None, ["serving_default"], False):
        status, answer = rest(server, "POST", predict_path(),
                              {"signature_name": name, "inputs": columnar(features)})
        assert status == 400, (name, answer)
        assert "\"signature_name\" must be a string" in answer["error"]
    status, _ = rest(server, "POST", predict_path(),
                     {"signature_name": "", "inputs": columnar(features)})
    assert status == 200  # "" is the default signature, as in TF Serving


def test_requests_over_the_candidate_cap_are_refused_with_a_clear_error(server, rows, model):
    features, _ = rows
    request = export.candidate_request(features, model.schema)
    n = MAX_CANDIDATES + 1
    request = {name: (np.resize(value, (1, n)) if name.startswith(export.CANDIDATE_PREFIX)
                      else value)
               for name, value in request.items()}
    status, answer = rest(server, "POST", predict_path(),
                          {"signature_name": export.SCORE_CANDIDATES, "inputs": columnar(request)})
    assert status == 400, answer
    for words in (f"{n} rows (or users x candidates)", f"at most {MAX_CANDIDATES}",
                  "--max_candidates_per_request"):
        assert words in answer["error"], answer["error"]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(grpc_request(request, export.SCORE_CANDIDATES), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max_candidates_per_request" in info.value.details()
        at_cap = {name: value[:, :MAX_CANDIDATES] if name.startswith(export.CANDIDATE_PREFIX)
                  else value for name, value in request.items()}
        response = stub.Predict(grpc_request(at_cap, export.SCORE_CANDIDATES), timeout=TIMEOUT)
        assert tf.make_ndarray(response.outputs[export.OUTPUT_KEY]).shape == (1, MAX_CANDIDATES)
    finally:
        channel.close()


# --- item 9: a failed version is retried once its files change ---------------------------------
def test_a_version_that_failed_to_load_is_retried_after_its_files_change(tiny, tmp_path, rows,
                                                                         model):
    base = tmp_path / MODEL_NAME
    base.mkdir()
    shutil.copytree(tiny.version_dir, base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with LocalServer(MODEL_NAME, str(base), rest_api_port=0, grpc_port=None,
                     poll_seconds=0.1) as server:
        assert server.repository.failed_versions == {2}  # the first poll, in start()
        assert wait_for(lambda: served_version(server) == 1)  # the next poll falls back
        server.repository.poll()
        assert server.repository.failed_versions == {2}  # unchanged: not loaded again
        # The export is fixed in place (its files replaced): the server tries it again.
        shutil.rmtree(base / "2")
        shutil.copytree(tiny.version_dir, base / "2")
        assert wait_for(lambda: served_version(server) == 2)
        assert server.repository.failed_versions == set()
        good_rest_request(server, rows, model)
