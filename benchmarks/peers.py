"""Training throughput and test AUC of our din against DeepCTR's DIN on the same TFRecords.

    python -m benchmarks.peers [--data DIR] [--users 2000] [--repetitions 3] [--steps 40]
        [--config configs/din.yaml ...] [--epochs 4] [--patience 2] [--no-fit]
    python -m benchmarks.peers --profile [--data DIR] [--calls 8]     # where a din step goes
    python -m benchmarks.peers --variant no_l2=model.embedding_l2=0 [--calls 8]
        # a step with config overrides against the config as it is, in one process
    (make bench-peers runs the first)

1. A side venv (`--side-venv`, default bench_out/peers_venv) with PyPI's deepctr, tf-keras and
   the TensorFlow they run on (`SIDE_PACKAGES`; DeepCTR needs tf-keras, TF_USE_LEGACY_KERAS=1,
   so it cannot share the project's venv). Installed once, reused while its stamp matches.
2. The data: `--data` (a `pipelines.build_tfrecords` output), else a `--users`-user generated log
   (`pipelines.synthetic`) through the Beam job, under bench_out/peers_data (reused).
3. DeepCTR reads in-memory numpy arrays, exported once from the same TFRecords (all of train,
   valid, test, file order) with our vocabularies' indices (0 padding, 1 OOV) under DeepCTR's
   feature names: a behaviour sequence is "hist_" + its target feature's name (hist_item_id).
   Ours reads the TFRecords through its real input pipeline (`qrec_tf.train.train`).
4. Throughput: each contender runs `--repetitions` times in a fresh process, the processes taking
   turns (ABBA order), `--warmup` + `--steps` steps each at `--batch-size`; examples/s from the
   median step time (batch begin -> end: the input's get_next inside the step included).
5. AUC: each trains up to `--epochs` epochs with early stopping on validation AUC (patience
   `--patience`, the best epoch's weights kept) and scores the test split; exact AUC of both
   with `qrec_tf.metrics.auc`, and DeLong's test of their difference.
6. This machine's float32 matmul GFLOP/s next to each step's achieved GFLOP/s
   (`benchmarks.step_flops`: FLOPs of the layers' matmuls, training step = 3 x forward).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.step_flops import din_shape, din_step_flops, matmul_gflops, mean_history_length
from benchmarks.step_timer import median_after_warmup, step_timer

ROOT = Path(__file__).resolve().parents[1]
SIDE_PACKAGES = ("deepctr==0.9.4", "tensorflow==2.21.0", "tf-keras==2.21.0")
DEEPCTR = "deepctr"
# DeepCTR's DIN pools the sequence named "hist_" + the target feature's name.
HISTORY_TARGETS = {"hist_item_ids": "item_id", "hist_category_ids": "category_id",
                   "hist_subcategory_ids": "subcategory_id"}


# --- the side venv and the data ------------------------------------------------------------------
def ensure_side_venv(path: Path) -> Path:
    """The side venv's python, created and installed (SIDE_PACKAGES) unless its stamp matches."""
    python, stamp = path / "bin" / "python", path / ".installed"
    wanted = "\n".join(SIDE_PACKAGES)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing {', '.join(SIDE_PACKAGES)} into {path} (once; minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SIDE_PACKAGES], check=True)
    stamp.write_text(wanted)
    return python


def ensure_data(data: str | None, work: Path, users: int) -> str:
    """`data` when given (checked), else a generated `users`-user log through the Beam job under
    work/ (reused when already there)."""
    from qrec_tf import schema as S

    if data is not None:
        S.Schema.load(data)   # a clear error when it is not the Beam job's output
        return data
    out = work / f"data_{users}u"
    if not (out / "tfrecords" / S.STATS_FILE).exists():
        from pipelines import build_tfrecords, synthetic

        print(f"generating a {users}-user log and its TFRecords under {out} ...", flush=True)
        synthetic.generate(str(out / "log"), users=users, seed=0)
        build_tfrecords.run(["--input", str(out / "log"), "--output", str(out / "tfrecords"),
                             "--overwrite"])
    return str(out / "tfrecords")


# --- TFRecords -> DeepCTR's numpy arrays ---------------------------------------------------------
def deepctr_name(feature: str) -> str:
    """Our feature name -> DeepCTR's: a history sequence is "hist_" + its target's name."""
    return "hist_" + HISTORY_TARGETS[feature] if feature in HISTORY_TARGETS else feature


def deepctr_features(schema) -> list[str]:
    """Our features that DIN reads: the user and item groups and the history sequences."""
    return [f.name for f in schema.group("user", "item", "history")]


def deepctr_columns(batch: dict, schema, lookups: dict) -> dict[str, np.ndarray]:
    """Raw features {our name: [rows, *shape]} (and "label") -> {DeepCTR's name: int32 indices
    of our lookups} (and "label" as it is): the same indices our model embeds."""
    out = {}
    for name in deepctr_features(schema):
        vocab = schema.feature(name).vocab
        out[deepctr_name(name)] = np.asarray(lookups[vocab](batch[name]), np.int32)
    if "label" in batch:
        out["label"] = np.asarray(batch["label"])
    return out


def read_split_as_deepctr(data_dir: str, split: str, schema, lookups: dict,
                          batch_size: int = 4096) -> dict[str, np.ndarray]:
    """A whole split in file order (as `qrec_tf.evaluate.predict` reads it) as DeepCTR arrays."""
    from qrec_tf import data

    parts = [deepctr_columns({k: v.numpy() for k, v in batch.items()}, schema, lookups)
             for batch in data.make_dataset(data_dir, split, batch_size, shuffle=False,
                                            features=[*deepctr_features(schema), "label"],
                                            schema=schema)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def export_arrays(data_dir: str, out: Path, config_model) -> Path:
    """train/valid/test.npz and meta.json for `benchmarks.peers_deepctr` under `out` (reused when
    written from the same data directory and model sizes)."""
    from qrec_tf import schema as S
    from qrec_tf.layers.id_lookup import make_lookup
    from qrec_tf.models.registry import load_vocabularies

    schema = S.Schema.load(data_dir)
    vocabs = load_vocabularies(data_dir, schema)
    meta = {
        "source": os.path.abspath(data_dir),
        "source_mtime": os.path.getmtime(os.path.join(data_dir, S.STATS_FILE)),
        "embedding_dim": config_model.embedding_dim,
        "history_length": schema.history_length,
        "attention_units": list(config_model.attention_units),
        "mlp_units": list(config_model.mlp_units),
        "sparse_features": [deepctr_name(f.name) for f in schema.group("user", "item")],
        "history_features": [HISTORY_TARGETS[f.name] for f in schema.group("history")],
        "vocab_sizes": {deepctr_name(f.name): vocabs.size(f.vocab)
                        for f in schema.group("user", "item")},
    }
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return out
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {f.vocab: f.dtype for f in schema.features if f.vocab}
    lookups = {v: make_lookup(vocabs.values[v], dtypes[v], f"lookup_{v}") for v in dtypes}
    for split in S.SPLITS:
        np.savez(out / f"{split}.npz", **read_split_as_deepctr(data_dir, split, schema, lookups))
    meta_path.write_text(json.dumps(meta, indent=1))
    return out


# --- the runs --------------------------------------------------------------------------------
@dataclasses.dataclass
class Contender:
    """One model in the comparison: its name, per-repetition step times, and its fit result."""

    name: str
    step_times: list[list[float]] = dataclasses.field(default_factory=list)
    fit: dict | None = None

    def medians(self, warmup: int) -> list[float]:
        return [median_after_warmup(t, warmup) for t in self.step_times]

    def median(self, warmup: int) -> float:
        """Median over every timed step of every repetition, seconds."""
        return statistics.median([s for t in self.step_times for s in t[warmup:]])


def run_ours(config_path: str, data_dir: str, mode: str, args, output: str) -> None:
    """A worker process: our model trained by `qrec_tf.train.train` (its real input pipeline),
    with a step timer; mode "fit" also scores the test split."""
    import keras

    from qrec_tf import evaluate, train
    from qrec_tf.config import load_config

    common = [f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
              f"train.learning_rate={args.learning_rate}"]
    if mode == "time":
        overrides = ["train.epochs=1", f"train.steps_per_epoch={args.warmup + args.steps}",
                     "train.validation_steps=1"]
    else:
        overrides = [f"train.epochs={args.epochs}",
                     f"train.early_stopping_patience={args.patience}"]
    config = load_config(config_path, common + overrides)
    timer = step_timer(keras.callbacks.Callback)
    result: dict = {"framework": "qrec_tf"}
    with tempfile.TemporaryDirectory() as model_dir:
        summary = train.train(config, data_dir, model_dir, verbose=0, extra_callbacks=[timer])
        if mode == "fit":
            _, model = evaluate.load_trained_model(model_dir, data_dir)
            scored = evaluate.predict(model, data_dir, "test")
            result["val_auc"] = summary["history"]["val_auc"]
            result["test_probabilities"] = scored["probability"].tolist()
            result["test_labels"] = scored["label"].tolist()
    result["step_seconds"] = timer.times
    Path(output).write_text(json.dumps(result))


def run_worker(contender: str, mode: str, args, arrays: Path, side_python: Path, data_dir: str,
               output: Path) -> dict:
    """One contender's run in a fresh process (nice'd as this one is); its result JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    common = ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--epochs", str(args.epochs),
              "--patience", str(args.patience), "--seed", str(args.seed),
              "--learning-rate", str(args.learning_rate), "--output", str(output)]
    if contender == DEEPCTR:
        command = [str(side_python), "-m", "benchmarks.peers_deepctr", "--arrays", str(arrays),
                   "--mode", mode, *common]
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        command = [sys.executable, "-m", "benchmarks.peers", "--worker", contender,
                   "--worker-mode", mode, "--data", data_dir, *common]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    result = json.loads(output.read_text())
    print(f"   {label(contender):28s} {mode:4s} {time.perf_counter() - started:6.0f} s "
          f"(process)", flush=True)
    return result


def label(contender: str) -> str:
    return "DeepCTR DIN" if contender == DEEPCTR else f"qrec_tf {Path(contender).stem}"


def turns(contenders: list[str], repetitions: int) -> list[str]:
    """The order of the timed runs: the contenders in turn, every other round reversed (ABBA),
    so that neither always runs first after the other."""
    order = []
    for rep in range(repetitions):
        order += contenders if rep % 2 == 0 else contenders[::-1]
    return order


def report(contenders: list[Contender], args, gflops: dict[str, float], matmul: float,
           test_labels: np.ndarray | None) -> str:
    """The comparison table: step times, examples/s, ratio to DeepCTR, GFLOP/s, test AUC."""
    from qrec_tf import metrics

    b, w = args.batch_size, args.warmup
    peer = next(c for c in contenders if c.name == DEEPCTR)
    lines = [f"batch {b}; median step time over {args.repetitions} runs x {args.steps} steps "
             f"(after {w} warm-up steps), runs taking turns; this machine's float32 matmul: "
             f"{matmul:.1f} GFLOP/s",
             f"{'model':28s} {'ms/step':>8s} {'per run':>22s} {'examples/s':>11s} "
             f"{'x DeepCTR':>9s} {'GFLOP/s':>8s} {'of matmul':>9s}"]
    for c in contenders:
        t = c.median(w)
        runs = ", ".join(f"{m * 1e3:.0f}" for m in c.medians(w))
        achieved = gflops[c.name] / t if c.name in gflops else float("nan")
        lines.append(f"{label(c.name):28s} {t * 1e3:8.1f} {runs:>22s} {b / t:11,.0f} "
                     f"{peer.median(w) / t:9.2f} {achieved:8.1f} {achieved / matmul:9.0%}")
    if test_labels is not None and all(c.fit for c in contenders):
        lines.append(f"test AUC after up to {args.epochs} epochs, early stopping on validation "
                     f"AUC (patience {args.patience}), best epoch's weights; "
                     f"{len(test_labels):,} test examples")
        for c in contenders:
            scores = np.asarray(c.fit["test_probabilities"])
            val = c.fit["val_auc"]
            best = int(np.argmax(val)) + 1
            lines.append(f"{label(c.name):28s} test AUC {metrics.auc(test_labels, scores):.4f}"
                         f"   epochs run {len(val)}, best {best} (val AUC {max(val):.4f})")
        for c in contenders:
            if c.name != DEEPCTR:
                test = metrics.delong_test(test_labels, np.asarray(c.fit["test_probabilities"]),
                                           np.asarray(peer.fit["test_probabilities"]))
                lines.append(f"{label(c.name)} - DeepCTR DIN: AUC difference "
                             f"{test['difference']:+.4f}, DeLong p = {test['p_value']:.3f}")
    return "\n".join(lines)


def compare(args) -> None:
    from qrec_tf import schema as S
    from qrec_tf.config import load_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    side_python = ensure_side_venv(Path(args.side_venv))
    data_dir = ensure_data(args.data, work, args.users)
    din = load_config(args.config[0]).model
    arrays = export_arrays(data_dir, work / "deepctr_arrays", din)
    print(f"data: {data_dir}; DeepCTR reads numpy arrays exported from it: {arrays}", flush=True)
    schema = S.Schema.load(data_dir)
    matmul = matmul_gflops()
    with np.load(arrays / "train.npz") as npz:     # DeepCTR's arrays: 0 is padding
        real_history = mean_history_length(npz["hist_item_id"], 0)
    print(f"history: {real_history:.1f} real positions of {schema.history_length} per example "
          f"on average (train split)", flush=True)
    gflops = {DEEPCTR: din_step_flops(
        din_shape(din, schema, args.batch_size, packed=False), False) / 1e9}
    for path in args.config:
        model = load_config(path).model
        if model.name == "din":
            gflops[path] = din_step_flops(
                din_shape(model, schema, args.batch_size, real_history)) / 1e9
    contenders = {name: Contender(name) for name in [*args.config, DEEPCTR]}
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    print("timed runs:", flush=True)
    for i, name in enumerate(turns(list(contenders), args.repetitions)):
        result = run_worker(name, "time", args, arrays, side_python, data_dir,
                            runs / f"time_{i}.json")
        contenders[name].step_times.append(result["step_seconds"])
    test_labels = None
    if not args.no_fit:
        print("training runs (early stopping):", flush=True)
        for name, contender in contenders.items():
            contender.fit = run_worker(name, "fit", args, arrays, side_python, data_dir,
                                       runs / f"fit_{Path(name).stem}.json")
        with np.load(arrays / "test.npz") as npz:
            test_labels = npz["label"]
        for contender in contenders.values():
            # Both scored the test split in file order: the same examples, row by row.
            if "test_labels" in contender.fit and not np.array_equal(
                    contender.fit["test_labels"], test_labels):
                raise RuntimeError(f"{contender.name} scored other test examples than DeepCTR")
    print(report(list(contenders.values()), args, gflops, matmul, test_labels))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="a build_tfrecords output (default: "
                        "generate a --users log under --work)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "peers"))
    parser.add_argument("--side-venv", default=str(ROOT / "bench_out" / "peers_venv"))
    parser.add_argument("--config", action="append", default=None,
                        help="our model's config (repeatable; default configs/din.yaml and "
                             "configs/queryrec.yaml; the first one's sizes also set DeepCTR's "
                             "DIN)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fit", action="store_true", help="throughput only, no AUC runs")
    parser.add_argument("--profile", action="store_true",
                        help="profile our din's step instead (benchmarks.peers_profile)")
    parser.add_argument("--calls", type=int, default=8,
                        help="with --profile: timed calls per part")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
                        help="time our step with these config overrides against the config as it "
                             "is, in one process taking turns (benchmarks.peers_profile; "
                             "repeatable), e.g. no_l2=model.embedding_l2=0")
    parser.add_argument("--full-history", action="store_true",
                        help="with --variant: every history position of the batch made real "
                             "(the worst case of the packed attention)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.config = args.config or ["configs/din.yaml", "configs/queryrec.yaml"]
    if args.worker:
        run_ours(args.worker, args.data, args.worker_mode, args, args.output)
    elif args.variant:
        from benchmarks import peers_profile

        variants = {}
        for spec in args.variant:
            name, _, overrides = spec.partition("=")
            if not name or not overrides:
                parser.error(f"--variant {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
            variants[name] = overrides.split(",")
        peers_profile.compare_variants(ensure_data(args.data, Path(args.work), args.users),
                                       args.config[0], args.batch_size, args.calls, variants,
                                       args.full_history)
    elif args.profile:
        from benchmarks import peers_profile

        peers_profile.profile(ensure_data(args.data, Path(args.work), args.users),
                              args.config[0], args.batch_size, args.calls)
    else:
        compare(args)


if __name__ == "__main__":
    main()
