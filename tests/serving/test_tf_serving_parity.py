"""The stand-in where users can see that it is not TF Serving (issue 32, item 3): version labels
from models.config over REST and gRPC, float_val in gRPC responses, Prometheus metrics, query
strings, strict HTTP framing, total header and body deadlines, TF Serving's version directory
names, unloading when every version is removed, and no resets with 64 clients at once."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from qrec_tf import export
from qrec_tf.version_names import MAX_VERSION, check_version, parse_version
from serving.client import ServingClient
from serving.client import main as client_main
from serving.local_server import LocalServer
from tests.serving.conftest import TIMEOUT, in_process
from tests.serving.test_local_server import columnar, grpc_request, rest, wait_for
from tests.serving.test_local_server_limits import post_head, raw_exchange
from tests.serving.tiny_model import MODEL_NAME

METRICS = "/monitoring/prometheus/metrics"


def write_config(path, base, labels, versions=(1, 2)):
    policy = " ".join(f"versions: {v}" for v in versions)
    label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}'
                         for k, v in labels.items())
    text = (f'model_config_list {{ config {{ name: "{MODEL_NAME}" base_path: "{base}" '
            f'model_platform: "tensorflow" model_version_policy {{ specific {{ {policy} }} }}'
            f'{label_text} }} }}\n')
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # TF Serving's advice: replace the file, never edit it in place


@pytest.fixture(scope="module")
def rollout(tiny, tmp_path_factory):
    """Versions 1 and 2 (a copy of 1) labelled stable and canary, metrics on, 1 s header and
    body deadlines."""
    root = tmp_path_factory.mktemp("rollout")
    base = root / MODEL_NAME
    shutil.copytree(tiny.base_path, base)
    shutil.copytree(base / "1", base / "2")
    config = root / "models.config"
    write_config(config, base, {"stable": 1, "canary": 2})
    with LocalServer(None, None, rest_api_port=0, grpc_port=0, poll_seconds=0.2,
                     model_config_file=str(config), config_poll_seconds=0.2,
                     metrics_path=METRICS, header_timeout_seconds=1.0,
                     body_timeout_seconds=1.0) as server:
        server.config_path = config
        server.base = base
        yield server


@pytest.fixture(scope="module")
def stubs(rollout):
    channel = grpc.insecure_channel(f"127.0.0.1:{rollout.grpc_port}")
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def status_versions(server, path):
    status, body = rest(server, "GET", path)
    assert status == 200, body
    return [int(v["version"]) for v in body["model_version_status"]]


# --- version labels -------------------------------------------------------------------------
def test_labels_over_rest_and_grpc_and_a_reloaded_config_moves_them(rollout, stubs, rows, model):
    predict, model_service = stubs
    base = f"/v1/models/{MODEL_NAME}"
    assert status_versions(rollout, base) == [1, 2]
    assert status_versions(rollout, base + "/labels/stable") == [1]
    assert status_versions(rollout, base + "/labels/canary") == [2]
    status, body = rest(rollout, "POST", base + "/labels/canary:predict",
                        {"inputs": columnar(rows[0])})
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"], in_process(model, rows[0]), atol=1e-5)
    status, body = rest(rollout, "GET", base + "/labels/nightly")
    assert status == 404 and "Unrecognized servable version label: nightly" in body["error"]

    request = grpc_request(rows[0])
    request.model_spec.version_label = "canary"
    assert predict.Predict(request, timeout=TIMEOUT).model_spec.version.value == 2
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    got = model_service.GetModelStatus(status_request, timeout=TIMEOUT)
    assert [s.version for s in got.model_version_status] == [1, 2]
    status_request.model_spec.version_label = "stable"
    got = model_service.GetModelStatus(status_request, timeout=TIMEOUT)
    assert [s.version for s in got.model_version_status] == [1]
    status_request.model_spec.version_label = "nightly"
    with pytest.raises(grpc.RpcError) as error:
        model_service.GetModelStatus(status_request, timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    # Promote: stable -> 2 (the canary), in the file the server re-reads.
    write_config(rollout.config_path, rollout.base, {"stable": 2, "canary": 2})
    assert wait_for(lambda: status_versions(rollout, base + "/labels/stable") == [2])
    # Roll back: stable -> 1 again.
    write_config(rollout.config_path, rollout.base, {"stable": 1, "canary": 2})
    assert wait_for(lambda: status_versions(rollout, base + "/labels/stable") == [1])


# --- gRPC responses -------------------------------------------------------------------------
def test_grpc_predict_fills_float_val_as_tf_serving(rollout, stubs, rows, model):
    response = stubs[0].Predict(grpc_request(rows[0]), timeout=TIMEOUT)
    output = response.outputs[export.OUTPUT_KEY]
    assert output.tensor_content == b""
    assert [d.size for d in output.tensor_shape.dim] == [len(rows[1])]
    np.testing.assert_allclose(list(output.float_val), in_process(model, rows[0]), atol=1e-5)


# --- metrics and URLs ---------------------------------------------------------------------
def metric(text: str, name: str, **labels) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"(\S+?)\{(.*)\} (\S+)", line)
        if not match or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def metrics_text(server) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=TIMEOUT)
    try:
        connection.request("GET", METRICS)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain")
        return response.read().decode()
    finally:
        connection.close()


def test_prometheus_metrics_count_requests_per_model_signature_and_status(rollout, stubs, rows):
    ok = dict(model_name=MODEL_NAME, API="predict", signature_name="serving_default")
    before = metrics_text(rollout)
    path = f"/v1/models/{MODEL_NAME}:predict?trace=1"  # a query string is ignored, as in TF Serving
    for _ in range(3):
        assert rest(rollout, "POST", path, {"inputs": columnar(rows[0])})[0] == 200
    bad = {"inputs": {"user_id": [1]}}
    assert rest(rollout, "POST", path, bad)[0] == 400
    stubs[0].Predict(grpc_request(rows[0]), timeout=TIMEOUT)
    after = metrics_text(rollout)
    count = ":tensorflow:serving:request_count"
    delta = {key: metric(after, count, entrypoint=e, status=s, **ok)
             - metric(before, count, entrypoint=e, status=s, **ok)
             for key, e, s in (("rest_ok", "REST", "OK"), ("rest_bad", "REST", "INVALID_ARGUMENT"),
                               ("grpc_ok", "GRPC", "OK"))}
    assert delta == {"rest_ok": 3, "rest_bad": 1, "grpc_ok": 1}
    latency = ":tensorflow:serving:request_latency"
    labels = dict(entrypoint="REST", status="OK", **ok)
    # The histogram's +Inf bucket and _count both hold every request.
    assert metric(after, latency + "_bucket", le="+Inf", **labels) == metric(
        after, latency + "_count", **labels) == metric(after, count, **labels)
    assert metric(after, latency + "_sum", **labels) > 0
    assert rest(rollout, "GET", f"/v1/models/{MODEL_NAME}?x=1")[0] == 200


# --- framing ------------------------------------------------------------------------------
@pytest.mark.parametrize("headers,why", [
    (b"Content-Length: \xb2\r\n", "not a number"),                        # superscript two
    (b"Content-Length: \xb2\r\nExpect: 100-continue\r\n", "not a number"),
    (b"Content-Length: 2\r\nContent-Length: 2\r\n", "2 Content-Length headers"),
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "both Content-Length"),
])
def test_malformed_framing_is_a_400(rollout, headers, why):
    head = (f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: x\r\n").encode()
    status, body = raw_exchange(rollout.rest_port, head + headers + b"\r\n{}")
    assert status == 400 and why in body["error"], body


# --- deadlines ----------------------------------------------------------------------------
def trickle(port: int, data: bytes, gap: float = 0.2, prefix: bytes = b"") -> tuple[int, bytes]:
    """Sends `prefix` at once, then `data` one byte per `gap` seconds until the server answers
    or closes: (bytes of `data` sent, what came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(prefix)
        sock.settimeout(gap)
        for sent, byte in enumerate(data):
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return sent, b""
            sock.settimeout(TIMEOUT)
            while chunk := sock.recv(65536):  # the rest of the answer, up to the close
                answer += chunk
            return sent, answer
        return len(data), b""


def test_headers_have_a_total_deadline(rollout):
    """One header byte every 0.2 s: closed after the 1 s deadline, not kept open by every byte
    (each gap is shorter than any timeout)."""
    head = (f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a" * 120
            + "\r\n\r\n").encode()
    sent, answer = trickle(rollout.rest_port, head)
    assert sent < len(head) and answer == b""


def test_a_body_has_a_total_deadline(rollout):
    """The headers at once, then one body byte every 0.05 s: a 400 after the 1 s deadline."""
    body = b"[" + b"1," * 100 + b"1]"
    sent, answer = trickle(rollout.rest_port, body, gap=0.05,
                           prefix=post_head(f"/v1/models/{MODEL_NAME}:predict", len(body)))
    assert sent < len(body)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
    assert b"did not arrive within 1 s" in answer


# --- connections --------------------------------------------------------------------------
def test_the_listen_backlog_holds_64_connections(rollout):
    assert shutil.which("ss"), "reading a socket's backlog needs ss (Debian: iproute2)"
    out = subprocess.run(["ss", "-ltnH", f"sport = :{rollout.rest_port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[2]) >= 64, out  # Send-Q of a listening socket: its backlog (was 5)


def test_64_concurrent_keep_alive_clients_are_all_answered(rollout, rows):
    body = json.dumps({"inputs": columnar({k: v[:1] for k, v in rows[0].items()})})
    start = threading.Barrier(64)
    results, errors = [], []

    def client():
        try:
            start.wait(TIMEOUT)
            connection = http.client.HTTPConnection("127.0.0.1", rollout.rest_port,
                                                    timeout=TIMEOUT)
            for _ in range(3):
                connection.request("POST", f"/v1/models/{MODEL_NAME}:predict", body=body)
                response = connection.getresponse()
                response.read()
                results.append(response.status)
            connection.close()
        except Exception as error:  # a reset or a timeout: the test reports it
            errors.append(repr(error))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [200] * 192


# --- versions -----------------------------------------------------------------------------
def test_version_names_follow_tf_serving(tiny, tmp_path):
    assert parse_version("12") == 12 and parse_version(str(MAX_VERSION)) == MAX_VERSION
    for name in ("\u0665", str(MAX_VERSION + 1), "99999999999999999999", "+1", " 1", "1a"):
        assert parse_version(name) is None, name
    with pytest.raises(ValueError, match="2\\*\\*63"):
        check_version(MAX_VERSION + 1)
    base = tmp_path / MODEL_NAME
    shutil.copytree(tiny.base_path, base)
    for name in ("\u0665", "99999999999999999999"):  # an Arabic-Indic 5, one past int64
        shutil.copytree(base / "1", base / name)
    assert export.existing_versions(str(base)) == [1] and export.next_version(str(base)) == 2
    with LocalServer(MODEL_NAME, str(base), rest_api_port=None, grpc_port=0) as server:
        assert sorted(server.repository.loaded) == [1]


def test_export_refuses_a_version_past_int64(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main(["--model-dir", tiny.model_dir, "--data", tiny.data_dir, "--output",
                     str(tmp_path / "m"), "--version", "99999999999999999999"])
    assert "2**63 - 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_removing_every_version_unloads_the_model(tiny, tmp_path):
    base = tmp_path / MODEL_NAME
    shutil.copytree(tiny.base_path, base)
    with LocalServer(MODEL_NAME, str(base), rest_api_port=0, grpc_port=None,
                     poll_seconds=0.1) as server:
        assert rest(server, "GET", f"/v1/models/{MODEL_NAME}")[0] == 200
        shutil.rmtree(base / "1")
        assert wait_for(lambda: rest(server, "GET", f"/v1/models/{MODEL_NAME}")[0] == 404)
        assert server.repository.current is None


def test_client_label_pins_a_labelled_version(rollout, tiny, capsys):
    for protocol, port in (("rest", rollout.rest_port), ("grpc", rollout.grpc_port)):
        with ServingClient(f"127.0.0.1:{port}", MODEL_NAME, protocol, label="canary") as client:
            assert [s["version"] for s in client.status()] == [2]
    assert client_main(["--server", f"127.0.0.1:{rollout.grpc_port}", "--protocol", "grpc",
                        "--model-name", MODEL_NAME, "--label", "stable", "--data", tiny.data_dir,
                        "--candidates", "20", "--top", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == 20
    assert client_main(["--server", f"127.0.0.1:{rollout.rest_port}", "--model-name",
                        MODEL_NAME, "--label", "nightly", "--data", tiny.data_dir]) == 2
    assert "Unrecognized servable version label" in capsys.readouterr().err


# --- warmup -------------------------------------------------------------------------------
def test_warmup_covers_every_candidate_bucket_up_to_the_limit(tiny, model, rows, tmp_path):
    """The default warmup: serving_default, from_examples, and one score_candidates request per
    bucket of 1..512 candidates (13: 8, 12, 16, 24, ..., 384, 512), each with realistic request
    times (every query before its impression)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from qrec_tf import schema as S

    count = export.write_warmup(str(tmp_path), MODEL_NAME, model.schema, *rows)
    sizes, signatures = [], []
    for record in tf.data.TFRecordDataset(str(tmp_path / export.WARMUP_FILE)):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        signatures.append(request.model_spec.signature_name)
        if signatures[-1] == export.SCORE_CANDIDATES:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            assert inputs["candidate_" + S.ITEM_ID].shape[0] == 1  # one user
            sizes.append(inputs["candidate_" + S.ITEM_ID].shape[1])
            times = inputs[S.QUERY_TIMESTAMPS][inputs[S.QUERY_TIMESTAMPS] > 0]
            assert times.size and (times <= inputs[S.TIMESTAMP][:, None]).all()
    assert count == len(signatures) == 15
    assert signatures[:2] == [export.SERVING_DEFAULT, export.FROM_EXAMPLES]
    assert sizes == [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    assert {export.candidate_bucket(n) for n in range(1, 513)} == set(sizes)
