"""Serving under load: concurrent keep-alive REST clients against serving.local_server, batching
off and on; and the first request of each size on a freshly loaded version.

    python -m benchmarks.serving_load [--export DIR --data DIR] [--clients 1,8,32,64]
        [--seconds 5] [--workloads predict,score100,score500] [--batching off,on]
        [--first-request]

Without --export, it builds a model as benchmarks/serving_latency.py does (QueryRec at
configs/queryrec.yaml's sizes on a generated 300-user sample). The server is a subprocess
(`python -m serving.local_server`, `--enable_batching --batching_parameters_file
serving/batching.config` for "on"); the clients are threads of this process, each with one
kept-alive connection, sending a pre-encoded body as fast as answers come back.

Workloads: `predict` (serving_default, 100 rows: one user's context repeated with 100 items),
`score100` and `score500` (score_candidates, one user x 100 or 500 candidates). Per cell:
answered (HTTP 200), errors (other statuses), resets (a connection reset or closed by the
server; the client reconnects), req/s and candidates/s (rows scored per second), p50 / p99
latency of the answered requests, and the kernel's TcpExtListenOverflows during the cell. Each
cell is preceded by untimed load at its concurrency until no request takes a second (warm_up:
batched shapes compile on their first batch).

--first-request: for 10, 50, 100, 200, 500 and 1000 candidates, the latency of the first and of
the second score_candidates request on a server that just loaded the export, with its warmup
file as exported (every bucket up to --warmup-max-candidates) and with the warmup of one
64-candidate request (what exports wrote before issue 32).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from benchmarks.serving_latency import build_model, free_port
from qrec_tf import export
from qrec_tf import schema as S
from serving.client import ServingClient, request_from_data

MODEL_NAME = "queryrec"
WORKLOADS = {"predict": 100, "score100": 100, "score500": 500}
FIRST_REQUEST_SIZES = (10, 50, 100, 200, 500, 1000)


def bodies(data: str, workloads: list[str]) -> dict[str, tuple[bytes, int]]:
    """workload -> (pre-encoded REST body, candidates it scores)."""
    out = {}
    for name in workloads:
        n = WORKLOADS[name]
        _, context, candidates = request_from_data(data, None, n)
        # A split may hold fewer distinct items than n: they are repeated up to n.
        take = [i % len(candidates[S.ITEM_ID]) for i in range(n)]
        candidates = {k: [v[i] for i in take] for k, v in candidates.items()}
        if name == "predict":
            inputs = {k: [v] * n for k, v in context.items()}
            inputs.update({k: list(v) for k, v in candidates.items()})
            body = {"signature_name": export.SERVING_DEFAULT, "inputs": inputs}
        else:
            inputs = {k: [v] for k, v in context.items()}
            inputs.update({export.candidate_input_name(k): [list(v)]
                           for k, v in candidates.items()})
            body = {"signature_name": export.SCORE_CANDIDATES, "inputs": inputs}
        out[name] = (json.dumps(body).encode(), n)
    return out


def listen_overflows() -> int:
    """The kernel's TcpExtListenOverflows (connections dropped at a full accept queue)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def load(port: int, body: bytes, clients: int, seconds: float) -> dict:
    """`clients` threads posting `body` for `seconds`: the cell's counts and latencies."""
    path = f"/v1/models/{MODEL_NAME}:predict"
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors, resets = [0] * clients, [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(i: int) -> None:
        connection = None
        start.wait()
        while not stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            began = time.perf_counter()
            try:
                connection.request("POST", path, body=body,
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                resets[i] += 1  # reset, or closed before answering: reconnect
                connection.close()
                connection = None
                continue
            if response.status == 200:
                latencies[i].append(time.perf_counter() - began)
            else:
                errors[i] += 1
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    overflows = listen_overflows()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    answered = np.array([x for per_client in latencies for x in per_client])
    return {"answered": len(answered), "errors": sum(errors), "resets": sum(resets),
            "overflows": listen_overflows() - overflows, "rps": len(answered) / elapsed,
            "p50": float(np.percentile(answered, 50) * 1e3) if len(answered) else float("nan"),
            "p99": float(np.percentile(answered, 99) * 1e3) if len(answered) else float("nan")}


def warm_up(port: int, body: bytes, clients: int, seconds: float, tries: int = 6) -> None:
    """Untimed load at this concurrency until no request is slower than a second: with
    batching, every new batch shape (users padded to a power of two) is an XLA compilation of
    1.5-3 s on its first batch, which the timed cell should not include."""
    for _ in range(tries):
        if load(port, body, clients, min(2.0, seconds))["p99"] < 1000:
            return


class Server:
    """serving.local_server in a subprocess on free ports, stopped by its PID."""

    def __init__(self, base: str, batching: bool):
        self.rest_port, self.grpc_port = free_port(), free_port()
        command = [sys.executable, "-m", "serving.local_server", "--model_name", MODEL_NAME,
                   "--model_base_path", base, "--rest_api_port", str(self.rest_port),
                   "--port", str(self.grpc_port)]
        if batching:
            command += ["--enable_batching", "--batching_parameters_file",
                        "serving/batching.config"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def __enter__(self) -> "Server":
        with ServingClient(f"127.0.0.1:{self.rest_port}", MODEL_NAME, timeout=60) as client:
            client.wait_until_available(timeout=600)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def first_requests(base: str, data: str) -> list[dict]:
    """Latency of the first and second request per size, full warmup and the old one."""
    _, context, candidates = request_from_data(data, None, max(FIRST_REQUEST_SIZES))
    available = len(candidates[S.ITEM_ID])
    version = export.existing_versions(base)[-1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, MODEL_NAME)
        shutil.copytree(os.path.join(base, str(version)), os.path.join(old, "1"))
        keep_one_candidate_request(os.path.join(old, "1", export.WARMUP_FILE), 64)
        for label, served in (("every bucket", base), ("one request (64)", old)):
            with Server(served, batching=False) as server, ServingClient(
                    f"127.0.0.1:{server.rest_port}", MODEL_NAME, timeout=300) as client:
                client.metadata()
                for n in FIRST_REQUEST_SIZES:
                    take = [i % available for i in range(n)]  # repeat items past the split's
                    subset = {k: [v[i] for i in take] for k, v in candidates.items()}
                    times = []
                    for _ in range(2):
                        began = time.perf_counter()
                        client.score_candidates(context, subset)
                        times.append((time.perf_counter() - began) * 1e3)
                    rows.append({"warmup": label, "candidates": n,
                                 "bucket": export.candidate_bucket(n),
                                 "first": times[0], "second": times[1]})
                    print(rows[-1], flush=True)
    return rows


def keep_one_candidate_request(path: str, n: int) -> None:
    """Rewrites a warmup file to hold serving_default, from_examples and one score_candidates
    request of `n` candidates (the warmup before issue 32)."""
    from tensorflow_serving.apis import prediction_log_pb2

    kept = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        if request.model_spec.signature_name != export.SCORE_CANDIDATES or (
                request.inputs[export.candidate_input_name(S.ITEM_ID)].tensor_shape.dim[1].size
                == export.candidate_bucket(n)):
            kept.append(record.numpy())
    with tf.io.TFRecordWriter(path) as writer:
        for record in kept:
            writer.write(record)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", help="a model's export base path (export/<name>)")
    parser.add_argument("--data", help="the Beam job output it was trained on")
    parser.add_argument("--work-dir", default="bench_out/serving_load")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell (default 5)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--batching", default="off,on")
    parser.add_argument("--first-request", action="store_true",
                        help="also measure the first request per size on a fresh server")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if bool(args.export) != bool(args.data):
        parser.error("--export and --data go together")
    try:
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error("--clients must be a comma-separated list of integers")
    workloads = args.workloads.split(",")
    modes = args.batching.split(",")
    if set(workloads) - set(WORKLOADS) or set(modes) - {"off", "on"} or min(clients) < 1:
        parser.error(f"--workloads from {sorted(WORKLOADS)}, --batching from off,on, "
                     "--clients >= 1")
    base, _, data = ((args.export, None, args.data) if args.export
                     else build_model(args.work_dir, []))
    requests = bodies(data, workloads)
    results = {"cells": [], "first_request": []}
    print("| batching | workload | clients | answered | errors | resets | listen overflows "
          "| req/s | candidates/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        with Server(base, batching=mode == "on") as server:
            for workload in workloads:
                body, n = requests[workload]
                for count in clients:
                    warm_up(server.rest_port, body, count, args.seconds)
                    cell = load(server.rest_port, body, count, args.seconds)
                    cell.update(batching=mode, workload=workload, clients=count,
                                candidates_per_s=cell["rps"] * n)
                    results["cells"].append(cell)
                    print(f"| {mode} | {workload} | {count} | {cell['answered']} | "
                          f"{cell['errors']} | {cell['resets']} | {cell['overflows']} | "
                          f"{cell['rps']:.1f} | {cell['candidates_per_s']:,.0f} | "
                          f"{cell['p50']:.1f} | {cell['p99']:.1f} |", flush=True)
    if args.first_request:
        results["first_request"] = first_requests(base, data)
        print("| warmup | candidates | bucket | first ms | second ms |")
        print("|---|---|---|---|---|")
        for row in results["first_request"]:
            print(f"| {row['warmup']} | {row['candidates']} | {row['bucket']} | "
                  f"{row['first']:.0f} | {row['second']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
