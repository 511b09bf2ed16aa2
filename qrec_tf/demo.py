"""`make demo`: the whole system end to end on a generated KuaiSAR-format sample, in a few minutes.

    python -m qrec_tf.demo --output demo_out [--users 1000] [--items 2000] [--seed 0]
        [--epochs 3] [--candidates 100]

Steps: generate a KuaiSAR-format log (pipelines.synthetic) -> Beam job (pipelines.build_tfrecords)
-> diffusion augmentation (qrec_tf.augment) -> train QueryRec (small
dimensions, a few epochs) -> evaluate on the test split -> export a SavedModel version ->
start serving.local_server (a subprocess, free local ports) -> score one user's candidates
over REST and over gRPC with serving/client.py -> print the scores and where everything was
written, and stop the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

from pipelines import build_tfrecords, synthetic
from qrec_tf import evaluate, export, model_layout, train
from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.metrics import auc, auc_standard_error, delong_test

MODEL_NAME = "queryrec"
# Small and quick; the paper-sized model is configs/queryrec.yaml as it is.
DEMO_OVERRIDES = ["model.mlp_units=[64, 32]", "model.attention_units=[32, 16]",
                  "model.sas_blocks=1", "train.batch_size=256", "train.learning_rate=0.003",
                  "train.shuffle_buffer=20000"]
AUGMENT_OVERRIDES = ["train.epochs=5"]
DEMO_USERS, DEMO_EPOCHS = 1000, 3
CALL_TIMEOUT_S = 300.0
# Loading a version replays its warmup requests (one XLA compilation per candidate bucket): about
# a minute on an idle 2-core machine, over three minutes on a busy one; the server listens only
# once its first version is loaded, as TF Serving does.
SERVER_START_TIMEOUT_S = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int):
        self.total, self.number, self.started = total, 0, time.monotonic()
        self._step_started = self.started

    def start(self, text: str) -> None:
        self.finish()
        self.number += 1
        self._step_started = time.monotonic()
        self._open = True
        print(f"[{self.number}/{self.total}] {text}", flush=True)

    def finish(self) -> None:
        if getattr(self, "_open", False):
            print(f"      ({time.monotonic() - self._step_started:.0f} s)", flush=True)
            self._open = False

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


def augment(data_dir: str, steps: Steps) -> None:
    """--- AUGMENT STEP --- runs `python -m qrec_tf.augment`, which writes <data>/positives/
    (training then uses it: model.positives=auto)."""
    command = [sys.executable, "-m", "qrec_tf.augment", "--data", data_dir, "--output", data_dir,
               "--verbose", "0", *[a for o in AUGMENT_OVERRIDES for a in ("--set", o)]]
    steps.note(" ".join(command[1:]))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        steps.note(f"positives table written to {data_dir}/positives/; training uses it")
    else:
        steps.note(f"WARNING: augmentation failed (exit {result.returncode}); training uses the "
                   "search-log positives. Its last output:")
        for line in (result.stdout + result.stderr).strip().splitlines()[-8:]:
            steps.note("  " + line)


def auc_verdict(metrics: dict) -> list[str]:
    """What the test AUC says, worded from the numbers: against chance (AUC - 2 standard errors
    above 0.5, about a one-sided 2.3% test) and against the popularity baseline (DeLong's paired
    test on the same rows)."""
    low = metrics["auc"] - 2 * metrics["auc_standard_error"]
    chance = ("clearly above chance" if low > 0.5 else "NOT clearly above chance (a larger "
              "--users gives more test rows)")
    versus = metrics["minus_popularity"]
    above = versus["difference"] > 0 and versus["p_value"] < 0.05
    return [f"AUC - 2 SE = {low:.4f}: {chance}",
            f"popularity baseline (items by training count) on the same rows: AUC "
            f"{metrics['popularity_auc']:.4f}; the model minus it {versus['difference']:+.4f} "
            f"+- {versus['sd']:.4f}, DeLong p = {versus['p_value']:.2g}: "
            + ("the model is above it" if above else "NOT shown to be above it")]


def start_server(base_path: str, log_path: str) -> tuple[subprocess.Popen, int, int]:
    rest_port, grpc_port = free_port(), free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", "--model_name", MODEL_NAME,
         "--model_base_path", base_path, "--rest_api_port", str(rest_port),
         "--port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process, rest_port, grpc_port


def wait_for_server(rest, process: subprocess.Popen) -> int:
    """The version the server serves once it is up; ServingError if it exits first or is not up
    after SERVER_START_TIMEOUT_S."""
    from serving.client import ServingError

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise ServingError("UNAVAILABLE", f"the server exited with status {process.returncode}")
        try:
            return rest.wait_until_available(timeout=10)
        except ServingError:
            if time.monotonic() > deadline:
                raise


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_out", help="everything is written below here")
    # 1,000 users: 930 test rows, so the test AUC's standard error is about 0.019 (at 300 users
    # it was 0.035, and AUC 0.56 could not be told from chance or from popularity); README,
    # "make demo", has the measured AUCs and times.
    parser.add_argument("--users", type=int, default=DEMO_USERS,
                        help=f"users of the generated log, one test row each (default "
                             f"{DEMO_USERS})")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                        help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--candidates", type=int, default=100,
                        help="candidates scored for the demo user (default 100)")
    args = parser.parse_args(argv)
    for flag in ("users", "items", "epochs", "candidates"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    logging.basicConfig(level=logging.WARNING, force=True,
                        format="%(asctime)s %(name)s: %(message)s")
    log_dir = os.path.join(args.output, "kuaisar_sample")
    data_dir = os.path.join(args.output, "data")
    model_dir = os.path.join(args.output, "model", MODEL_NAME)
    base_path = os.path.join(args.output, "export", MODEL_NAME)
    server_log = os.path.join(args.output, "local_server.log")
    steps = Steps(8)

    steps.start(f"generating a KuaiSAR-format sample ({args.users} users, {args.items} items) "
                f"-> {log_dir}")
    manifest = synthetic.generate(log_dir, users=args.users, items=args.items, seed=args.seed)
    steps.note("rows: " + ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items()))

    steps.start(f"Beam job (DirectRunner) -> {data_dir}")
    # A sample this small is done before worker processes would have started.
    build_tfrecords.run(["--input", log_dir, "--output", data_dir, "--overwrite",
                         "--direct_running_mode=in_memory"])
    with open(os.path.join(data_dir, S.STATS_FILE)) as f:
        examples = json.load(f)["examples"]
    steps.note("examples: " + ", ".join(f"{split} {examples[split]['count']:,}"
                                        for split in S.SPLITS))

    steps.start("diffusion augmentation (qrec_tf.augment)")
    augment(data_dir, steps)

    steps.start(f"training {MODEL_NAME} ({args.epochs} epochs, small dimensions) -> {model_dir}")
    shutil.rmtree(model_dir, ignore_errors=True)  # this demo's own previous model
    config = load_config(f"configs/{MODEL_NAME}.yaml",
                         [*DEMO_OVERRIDES, f"train.epochs={args.epochs}",
                          f"train.seed={args.seed}"])
    summary = train.train(config, data_dir, model_dir, verbose=0)
    steps.note(f"best validation AUC {summary['best_val_auc']:.4f} (epoch "
               f"{summary['best_epoch']})")

    steps.start("evaluating on the test split")
    predictions_path = os.path.join(model_dir, "predictions_test.csv")
    metrics = evaluate.evaluate(model_dir, data_dir, "test", predictions_path=predictions_path)
    predictions = evaluate.read_predictions(predictions_path)
    # The AUC's standard error (DeLong), and a popularity baseline on the same rows: what the
    # model's AUC is to be read against.
    metrics["auc_standard_error"] = auc_standard_error(predictions["label"],
                                                       predictions["probability"])
    popularity = evaluate.item_popularity(data_dir, predictions["item_id"])
    metrics["popularity_auc"] = auc(predictions["label"], popularity)
    # DeLong's paired test on the same rows: is the model's AUC above the baseline's?
    versus = delong_test(predictions["label"], predictions["probability"], popularity)
    metrics["minus_popularity"] = {k: versus[k] for k in ("difference", "sd", "p_value")}
    metrics_path = os.path.join(model_dir, "metrics_test.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    steps.note(f"AUC {metrics['auc']:.4f} +- {metrics['auc_standard_error']:.4f} (standard "
               f"error), logloss {metrics['logloss']:.4f} (n = {metrics['n']})")
    for line in auc_verdict(metrics):
        steps.note(line)

    steps.start(f"exporting a SavedModel version -> {base_path}/")
    version_dir = export.export(model_dir, base_path, data_dir)
    steps.note(f"{version_dir} (signatures: {', '.join(export.SIGNATURES)})")

    steps.start("starting the local TF Serving stand-in (serving.local_server)")
    from serving.client import ServingClient, ServingError, request_from_data

    process, rest_port, grpc_port = start_server(base_path, server_log)
    try:
        # The first scoring call compiles the scoring function in the server: on a busy machine
        # that takes longer than the client's default 10 s per call.
        with ServingClient(f"127.0.0.1:{rest_port}", MODEL_NAME, "rest",
                           timeout=CALL_TIMEOUT_S) as rest:
            steps.note("loading the version and replaying its warmup requests (a minute or "
                       "more)")
            try:
                version = wait_for_server(rest, process)
            except ServingError as error:
                with open(server_log) as f:
                    tail = f.read()[-2000:]
                print(f"{parser.prog}: error: the server did not come up: {error}\n{tail}",
                      file=sys.stderr)
                return 1
            steps.note(f"version {version}: REST on 127.0.0.1:{rest_port}, gRPC on "
                       f"127.0.0.1:{grpc_port} (log: {server_log})")

            steps.start(f"scoring one user's {args.candidates} candidates over REST and gRPC")
            user_id, context, candidates = request_from_data(data_dir, None, args.candidates)
            timings = {}
            started = time.perf_counter()
            scores = {"rest": rest.score_candidates(context, candidates)}
            timings["rest"] = time.perf_counter() - started
            with ServingClient(f"127.0.0.1:{grpc_port}", MODEL_NAME, "grpc",
                               timeout=CALL_TIMEOUT_S) as grpc_client:
                started = time.perf_counter()
                scores["grpc"] = grpc_client.score_candidates(context, candidates)
                timings["grpc"] = time.perf_counter() - started
    finally:
        stop_server(process)

    items = candidates[S.ITEM_ID]
    order = np.argsort(-scores["rest"], kind="stable")
    difference = float(np.max(np.abs(scores["rest"] - scores["grpc"])))
    steps.note(f"user {user_id}: {len(items)} candidates; REST {timings['rest'] * 1e3:.1f} ms, "
               f"gRPC {timings['grpc'] * 1e3:.1f} ms (first call); REST and gRPC scores differ "
               f"by at most {difference:.1g}")
    steps.note(f"{'rank':>4}  {S.ITEM_ID:>9}  {'ctr (REST)':>10}  {'ctr (gRPC)':>10}")
    for rank, i in enumerate(order[:10], start=1):
        own = "  <- the user's test impression" if i == 0 else ""
        steps.note(f"{rank:>4}  {items[i]:>9}  {scores['rest'][i]:>10.4f}  "
                   f"{scores['grpc'][i]:>10.4f}{own}")
    own_rank = int(np.flatnonzero(order == 0)[0]) + 1
    steps.note(f"the user's test item ({items[0]}) ranks {own_rank} of {len(items)}")
    steps.finish()
    print(f"\nDone in {time.monotonic() - steps.started:.0f} s; the server is stopped. Written:\n"
          f"  KuaiSAR-format log   {log_dir}/\n"
          f"  TFRecords            {data_dir}/{{train,valid,test}}/ (+ vocab/, query_items/, "
          f"stats.json)\n"
          f"  trained model        {model_dir}/ ({model_layout.CONFIG_FILE}, "
          f"{model_layout.WEIGHTS_FILE}, {model_layout.TENSORBOARD_DIR}/)\n"
          f"  test metrics         {metrics_path}\n"
          f"  SavedModel           {version_dir}/\n"
          f"  server log           {server_log}\n"
          f"Serve it again:  python -m serving.local_server --model_name {MODEL_NAME} "
          f"--model_base_path {base_path}\n"
          f"Score a user:    python -m serving.client --model-name {MODEL_NAME} "
          f"--data {data_dir} --user-id {user_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
