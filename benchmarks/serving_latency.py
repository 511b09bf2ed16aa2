"""Serving latency for one user x 200 candidates, in one run: in-process, REST and gRPC.

    python -m benchmarks.serving_latency [--requests 300] [--in-process-requests 1000]
        [--candidates 200]
        [--export DIR --data DIR | --set model.attention_units=[32,16] ...]

Without --export, it first builds a model to serve under bench_out/serving_latency/: a generated
sample (300 users, 2,000 items), the Beam job, QueryRec with configs/queryrec.yaml's sizes trained
for a few steps (latency does not depend on how well it is trained), and an export.

Measured, one request at a time (p50 / p99 latency and requests/s = 1 / mean latency):
  1. in-process: the reloaded SavedModel's `score_candidates` signature (context once, 200
     candidates; everything after the vocabulary lookups compiled by XLA, as the export writes
     it) -- target p99 < 10 ms;
  2. the same signature of an export written with --no-xla (built here only), for comparison;
  3. in-process `serving_default` with the same 200 (user, candidate) rows, for comparison;
  4. REST and gRPC against serving.local_server (a subprocess) through serving/client.py,
     with score_candidates and with the 200-row serving_default request.
Last, the machine's own noise: p99 / p50 of a fixed matrix product of a few ms, timed the same
way, next to that ratio for in-process score_candidates.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from qrec_tf import export
from qrec_tf import schema as S
from serving.client import ServingClient, request_from_data

MODEL_NAME = "queryrec"


def build_model(root: str, overrides: list[str]) -> tuple[str, str, str]:
    """(export base path, the --no-xla export's base path, data dir) of a freshly built model
    under `root`."""
    from pipelines import build_tfrecords, synthetic
    from qrec_tf import train
    from qrec_tf.config import load_config

    log, data, model = (os.path.join(root, name) for name in ("log", "data", "model"))
    base = os.path.join(root, "export", MODEL_NAME)
    print(f"building a model to serve under {root} (generate, Beam, train, export)", flush=True)
    synthetic.generate(log, users=300, items=2000, seed=0)
    build_tfrecords.run(["--input", log, "--output", data, "--overwrite"])
    config = load_config(f"configs/{MODEL_NAME}.yaml", [
        "train.epochs=1", "train.steps_per_epoch=20", "train.validation_steps=2", *overrides])
    train.train(config, data, model, verbose=0)
    export.export(model, base, data)
    no_xla = os.path.join(root, "export_no_xla", MODEL_NAME)
    export.export(model, no_xla, data, xla=False)
    return base, no_xla, data


def newest_version(base: str) -> str:
    versions = export.existing_versions(base)
    if not versions:
        raise SystemExit(f"no numbered version under {base}")
    return os.path.join(base, str(versions[-1]))


def measure(call, requests: int, warmup: int = 20) -> dict:
    for _ in range(warmup):
        call()
    latencies = np.empty(requests)
    for i in range(requests):
        started = time.perf_counter()
        call()
        latencies[i] = time.perf_counter() - started
    return {"p50": np.percentile(latencies, 50) * 1e3, "p99": np.percentile(latencies, 99) * 1e3,
            "rps": 1.0 / latencies.mean()}


def machine_noise(requests: int) -> dict:
    """The same statistics for a fixed CPU task of a few ms (a float32 matrix product): how far
    p99 strays from p50 on this machine when the work itself never changes."""
    rng = np.random.default_rng(0)
    a, b = rng.random((1600, 400), np.float32), rng.random((400, 400), np.float32)
    return measure(lambda: a @ b, requests)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per path")
    parser.add_argument("--in-process-requests", type=int, default=1000,
                        help="timed requests for in-process score_candidates (its p99 is the "
                             "target: 1000 requests put 10 above it)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--export", help="a model's export base path (export/<name>)")
    parser.add_argument("--data", help="the Beam job output it was trained on")
    parser.add_argument("--work-dir", default="bench_out/serving_latency")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for the model built here, e.g. "
                             "model.attention_units=[32,16] (default: configs/queryrec.yaml)")
    args = parser.parse_args()
    if bool(args.export) != bool(args.data):
        parser.error("--export and --data go together")
    if args.export and args.set:
        parser.error("--set applies to the model built here, not to --export")
    base, no_xla, data = ((args.export, None, args.data) if args.export
                          else build_model(args.work_dir, args.set))
    version_dir = newest_version(base)
    user_id, context, candidates = request_from_data(data, None, args.candidates)
    n = len(candidates[S.ITEM_ID])
    if n < args.candidates:
        print(f"note: the test split has only {n} distinct items; scoring {n} candidates")

    loaded = tf.saved_model.load(version_dir)
    schema = S.Schema.load(data)
    score_inputs = {name: [value] for name, value in context.items()}
    score_inputs.update({export.candidate_input_name(name): [values]
                         for name, values in candidates.items()})
    specs = export.score_candidates_specs(schema)
    score_tensors = {name: tf.constant(value, specs[name].dtype)
                     for name, value in score_inputs.items()}
    row_tensors = {name: tf.repeat(value, n, axis=0) for name, value in score_tensors.items()
                   if not name.startswith(export.CANDIDATE_PREFIX)}
    row_tensors.update({name.removeprefix(export.CANDIDATE_PREFIX): value[0]
                        for name, value in score_tensors.items()
                        if name.startswith(export.CANDIDATE_PREFIX)})
    score_fn = loaded.signatures[export.SCORE_CANDIDATES]
    rows_fn = loaded.signatures[export.SERVING_DEFAULT]
    by_candidates = score_fn(**score_tensors)[export.OUTPUT_KEY].numpy()[0]
    by_rows = rows_fn(**row_tensors)[export.OUTPUT_KEY].numpy()
    assert np.allclose(by_candidates, by_rows, atol=1e-5), "the two signatures disagree"
    row_inputs = {name: value.numpy() for name, value in row_tensors.items()}

    print(f"model {version_dir}; user {user_id} x {n} candidates; {args.requests} requests per "
          "path, one at a time", flush=True)
    results = {"in-process score_candidates": measure(
        lambda: score_fn(**score_tensors)[export.OUTPUT_KEY].numpy(), args.in_process_requests)}
    if no_xla:
        plain_fn = tf.saved_model.load(newest_version(no_xla)).signatures[export.SCORE_CANDIDATES]
        assert np.allclose(plain_fn(**score_tensors)[export.OUTPUT_KEY].numpy()[0], by_candidates,
                           atol=1e-5), "the --no-xla export disagrees"
        results["in-process score_candidates, --no-xla"] = measure(
            lambda: plain_fn(**score_tensors)[export.OUTPUT_KEY].numpy(), args.requests)
    results["in-process serving_default (200 rows)"] = measure(
        lambda: rows_fn(**row_tensors)[export.OUTPUT_KEY].numpy(), args.requests)
    rest_port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", "--model_name", MODEL_NAME,
         "--model_base_path", base, "--rest_api_port", str(rest_port), "--port",
         str(grpc_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for protocol, port in (("REST", rest_port), ("gRPC", grpc_port)):
            with ServingClient(f"127.0.0.1:{port}", MODEL_NAME, protocol.lower(),
                               timeout=120) as client:
                client.wait_until_available(timeout=180)
                remote = client.score_candidates(context, candidates)
                assert np.allclose(remote, by_candidates, atol=1e-5), f"{protocol} disagrees"
                results[f"{protocol} score_candidates"] = measure(
                    lambda: client.score_candidates(context, candidates), args.requests)
                results[f"{protocol} serving_default (200 rows)"] = measure(
                    lambda: client.predict(row_inputs), args.requests)
    finally:
        server.terminate()
        server.wait(timeout=30)

    reference = results["in-process score_candidates"]["p50"]
    print(f"\n{'path':40s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'p50 / in-process':>17s}")
    for name, r in results.items():
        print(f"{name:40s} {r['p50']:8.2f} {r['p99']:8.2f} {r['rps']:8.0f} "
              f"{r['p50'] / reference:17.2f}")
    p99 = results["in-process score_candidates"]["p99"]
    print(f"\nin-process score_candidates p99 {p99:.2f} ms: target < 10 ms "
          f"{'met' if p99 < 10 else 'NOT met'}")
    noise = machine_noise(args.in_process_requests)
    print(f"machine noise (a fixed {noise['p50']:.1f} ms matrix product, same count): p99 / p50 "
          f"{noise['p99'] / noise['p50']:.2f}; in-process score_candidates: "
          f"{p99 / results['in-process score_candidates']['p50']:.2f}")
    ratios = {where: results[f"{where} serving_default (200 rows)"]["p50"]
              / results[f"{where} score_candidates"]["p50"]
              for where in ("in-process", "REST", "gRPC")}
    print("p50 of the 200-row serving_default / p50 of score_candidates: "
          + ", ".join(f"{where} {ratio:.2f}x" for where, ratio in ratios.items()))

if __name__ == "__main__":
    main()
