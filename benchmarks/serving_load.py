"""Serving under load: concurrent keep-alive REST clients against serving.local_server, batching
off and on; and the first request of each size on a freshly loaded version.

    python -m benchmarks.serving_load [--export DIR --data DIR] [--clients 1,8,32,64]
        [--seconds 5] [--workloads predict,score100,score500] [--batching off,on[,on:PATH]]
        [--repeats R] [--curve] [--first-request]

Without --export, it builds a model as benchmarks/serving_latency.py does (QueryRec at
configs/queryrec.yaml's sizes on a generated 300-user sample). Each mode's server is a subprocess
(`python -m serving.local_server --monitoring_config_file serving/monitoring.config`, plus
`--enable_batching --batching_parameters_file serving/batching.config` for "on", or PATH for
"on:PATH"), all started at once; the modes alternate cell by cell (and --repeats times), so that
the load of a shared machine drifts over all of them alike. The clients are threads of this
process, each with one kept-alive connection, sending a pre-encoded body as fast as answers come
back.

Workloads: `predict` (serving_default, 100 rows: one user's context repeated with 100 items),
`score100` and `score500` (score_candidates, one user x 100 or 500 candidates). Per cell:
answered (HTTP 200), errors (other statuses), resets (a connection reset or closed by the
server; the client reconnects), req/s and candidates/s (rows scored per second), p50 / p99
latency of the answered requests, the kernel's TcpExtListenOverflows during the cell; with
batching the mean batch (rows, or users for score_candidates), the mean wait in the batch queue
and the mean batch run time (the server's batching metrics); and the CPU time per answered
request of the server (split into its Python threads and TensorFlow's `tf_*` pool threads) and of
the clients. CPU per request does not depend on how much of the machine others take, so it says
what a machine saturated by the server would gain. Each cell is preceded by untimed load at its
concurrency until no request takes a second (warm_up: batched shapes compile on their first
batch). A last table gives each batching mode's candidates/s over off's and off's server CPU
per request over its own.

--curve: in process, without HTTP, the signature's time per call for 1..64 copies of each
workload's request in one call, and the model-only throughput of one request per call on 8
threads against 32 per call (batch_curve): the most batching can gain here.

--first-request: for 10, 50, 100, 200, 500 and 1000 candidates, the latency of the first and of
the second score_candidates request on a server that just loaded the export, with its warmup
file as exported (every bucket up to --warmup-max-candidates) and with the warmup of one
64-candidate request (what exports wrote before issue 32).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from benchmarks.serving_latency import build_model, free_port
from benchmarks.serving_probes import batch_curve, cpu_seconds, listen_overflows
from qrec_tf import export
from qrec_tf import schema as S
from serving.client import ServingClient, request_from_data
from serving.local_server.batching import read_batching_parameters
from serving.local_server.metrics import BATCH_RUN_TIME, BATCH_SIZE, QUEUING_LATENCY

MODEL_NAME = "queryrec"
WORKLOADS = {"predict": 100, "score100": 100, "score500": 500}
FIRST_REQUEST_SIZES = (10, 50, 100, 200, 500, 1000)
BATCHING_CONFIG = "serving/batching.config"
MONITORING_CONFIG = "serving/monitoring.config"
METRICS_PATH = "/monitoring/prometheus/metrics"


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


def load(port: int, body: bytes, clients: int, seconds: float, pid: int | None = None) -> dict:
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
    server_cpu, own_cpu = cpu_seconds(pid) if pid else (0.0, 0.0), sum(os.times()[:2])
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    answered = np.array([x for per_client in latencies for x in per_client])
    cpu = {}
    if pid:  # CPU per answered request: what the throughput of a saturated machine follows
        total, pool = (b - a for a, b in zip(server_cpu, cpu_seconds(pid)))
        per = 1e3 / max(len(answered), 1)
        cpu = {"server_cpu_ms": total * per, "tf_pool_cpu_ms": pool * per,
               "python_cpu_ms": (total - pool) * per,
               "client_cpu_ms": (sum(os.times()[:2]) - own_cpu) * per}
    return {**cpu, "answered": len(answered), "errors": sum(errors), "resets": sum(resets),
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
    """serving.local_server in a subprocess on free ports, stopped by its PID; `batching`: None
    (off) or a batching.config. Metrics are on (serving/monitoring.config) in both modes, so
    that they cost the same and the batch statistics can be read."""

    def __init__(self, base: str, batching: str | None):
        self.rest_port, self.grpc_port = free_port(), free_port()
        command = [sys.executable, "-m", "serving.local_server", "--model_name", MODEL_NAME,
                   "--model_base_path", base, "--rest_api_port", str(self.rest_port),
                   "--port", str(self.grpc_port),
                   "--monitoring_config_file", MONITORING_CONFIG]
        if batching:
            command += ["--enable_batching", "--batching_parameters_file", batching]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def __enter__(self) -> "Server":
        with ServingClient(f"127.0.0.1:{self.rest_port}", MODEL_NAME, timeout=60) as client:
            client.wait_until_available(timeout=1800)  # a loaded 2-core machine
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def batch_stats(self) -> dict[str, tuple[float, float]]:
        """Batching metric -> (count, sum) over all signatures, from the metrics endpoint."""
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=60)
        try:
            connection.request("GET", METRICS_PATH)
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        out = {}
        for name in (BATCH_SIZE, QUEUING_LATENCY, BATCH_RUN_TIME):
            values = [sum(float(v) for v in re.findall(
                rf"^{re.escape(name)}_{part}{{[^}}]*}} (\S+)$", text, re.M))
                for part in ("count", "sum")]
            out[name] = (values[0], values[1])
        return out


def batch_delta(before: dict, after: dict) -> dict:
    """Mean batch size, queueing ms and batch run ms between two batch_stats readings."""
    def mean(name, scale=1.0):
        count = after[name][0] - before[name][0]
        return (after[name][1] - before[name][1]) / count * scale if count else float("nan")
    return {"batches": after[BATCH_SIZE][0] - before[BATCH_SIZE][0],
            "mean_batch": mean(BATCH_SIZE), "queue_ms": mean(QUEUING_LATENCY, 1e-3),
            "run_ms": mean(BATCH_RUN_TIME, 1e-3)}


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
            with Server(served, batching=None) as server, ServingClient(
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


def parse_modes(text: str) -> dict[str, str | None]:
    """`off,on,on:PATH` -> label -> batching.config (None: off); `on` is serving/batching.config."""
    modes = {}
    for item in text.split(","):
        if item == "off":
            modes[item] = None
        elif item == "on":
            modes[item] = BATCHING_CONFIG
        elif item.startswith("on:") and os.path.isfile(item[3:]):
            modes[f"on:{os.path.basename(item[3:])}"] = item[3:]
        else:
            raise ValueError(f"--batching item {item!r}: off, on or on:PATH (an existing file)")
    return modes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", help="a model's export base path (export/<name>)")
    parser.add_argument("--data", help="the Beam job output it was trained on")
    parser.add_argument("--work-dir", default="bench_out/serving_load")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell (default 5)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--batching", default="off,on",
                        help="modes, interleaved cell by cell: off, on (serving/batching.config)"
                             " or on:PATH (another batching.config)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="each cell this many times, the modes interleaved (default 1)")
    parser.add_argument("--first-request", action="store_true",
                        help="also measure the first request per size on a fresh server")
    parser.add_argument("--curve", action="store_true",
                        help="also time the signature in process per batch size (batch_curve)")
    parser.add_argument("--no-load", action="store_true",
                        help="no load cells (with --curve or --first-request)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if bool(args.export) != bool(args.data):
        parser.error("--export and --data go together")
    try:
        clients = [int(c) for c in args.clients.split(",")]
        modes = parse_modes(args.batching)
    except ValueError as error:
        parser.error(f"--clients must be a comma-separated list of integers; {error}")
    workloads = args.workloads.split(",")
    if set(workloads) - set(WORKLOADS) or min(clients) < 1 or args.repeats < 1:
        parser.error(f"--workloads from {sorted(WORKLOADS)}, --clients >= 1, --repeats >= 1")
    base, _, data = ((args.export, None, args.data) if args.export
                     else build_model(args.work_dir, []))
    requests = bodies(data, workloads)
    results = {"cells": [], "first_request": [], "curve": []}
    print("| batching | workload | clients | answered | errors | resets | listen overflows "
          "| req/s | candidates/s | p50 ms | p99 ms | mean batch | queue ms | batch run ms "
          "| server CPU ms/req (python + tf pool) | client CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if args.no_load:
        modes = {}
    with contextlib.ExitStack() as stack:
        # Every mode's server at once (an idle one costs nothing): the modes alternate cell by
        # cell, so that the machine's load (shared, noisy) drifts over all of them alike.
        servers = {}
        for mode, path in modes.items():  # the servers load and warm up side by side
            servers[mode] = Server(base, path)
            stack.push(servers[mode].__exit__)
        for server in servers.values():
            server.__enter__()
        for workload in workloads:
            body, n = requests[workload]
            for count in clients:
                for repeat in range(args.repeats):
                    for mode, server in servers.items():
                        warm_up(server.rest_port, body, count, args.seconds)
                        before = server.batch_stats()
                        cell = load(server.rest_port, body, count, args.seconds,
                                    server.process.pid)
                        cell.update(batch_delta(before, server.batch_stats()), batching=mode,
                                    workload=workload, clients=count, repeat=repeat,
                                    candidates_per_s=cell["rps"] * n)
                        results["cells"].append(cell)
                        print(f"| {mode} | {workload} | {count} | {cell['answered']} | "
                              f"{cell['errors']} | {cell['resets']} | {cell['overflows']} | "
                              f"{cell['rps']:.1f} | {cell['candidates_per_s']:,.0f} | "
                              f"{cell['p50']:.1f} | {cell['p99']:.1f} | "
                              f"{cell['mean_batch']:.1f} | {cell['queue_ms']:.1f} | "
                              f"{cell['run_ms']:.1f} | {cell['server_cpu_ms']:.2f} "
                              f"({cell['python_cpu_ms']:.2f} + {cell['tf_pool_cpu_ms']:.2f}) | "
                              f"{cell['client_cpu_ms']:.2f} |", flush=True)
    print_ratios(results["cells"])
    if args.curve:
        results["curve"] = batch_curve(base, bodies(data, workloads), read_batching_parameters(
            BATCHING_CONFIG).num_batch_threads)
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


def print_ratios(cells: list[dict]) -> None:
    """Per workload, clients and repeat, each batching mode against the off cell run just
    before it: candidates/s over off's, and off's server CPU per request over its own (the gain
    a machine saturated by the server alone would see); medians over the repeats."""
    off = {(c["workload"], c["clients"], c["repeat"]): c for c in cells if c["batching"] == "off"}
    ratios: dict[tuple, list[tuple[float, float]]] = {}
    for c in cells:
        base = off.get((c["workload"], c["clients"], c["repeat"]))
        if c["batching"] != "off" and base and base["candidates_per_s"] and c["answered"]:
            ratios.setdefault((c["batching"], c["workload"], c["clients"]), []).append(
                (c["candidates_per_s"] / base["candidates_per_s"],
                 base.get("server_cpu_ms", 0.0) / max(c.get("server_cpu_ms", 0.0), 1e-9)))
    if ratios:
        print("| batching | workload | clients | candidates/s over off, per repeat | median "
              "| server CPU per request, off over this, per repeat | median |")
        print("|---|---|---|---|---|---|---|")
    for (mode, workload, count), values in ratios.items():
        rate, cpu = [v[0] for v in values], [v[1] for v in values]
        print(f"| {mode} | {workload} | {count} | {', '.join(f'{v:.2f}' for v in rate)} | "
              f"{float(np.median(rate)):.2f} | {', '.join(f'{v:.2f}' for v in cpu)} | "
              f"{float(np.median(cpu)):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
