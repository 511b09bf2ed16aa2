"""The paper's table 5 ablation on generated data: every model, several seeds, test AUC.

    python benchmarks/ablation.py [--users 2000] [--seeds 0 1 2] [--epochs 3]
        [--models din din_query din_nip din_con queryrec dcn] [--workdir bench_out/ablation]

Generates one KuaiSAR-format log (pipelines.synthetic), runs the Beam job once, trains each model
with each seed on the same data, evaluates on the test split, and writes the table (mean and std of
test AUC, relative AUC change over din) to docs/RESULTS.md between the ablation markers.
Shape the paper reports (KuaiSAR-small): din_query ~ din; din_nip and din_con above din; queryrec
highest.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines import build_tfrecords, synthetic  # noqa: E402
from qrec_tf import evaluate, train  # noqa: E402
from qrec_tf.config import load_config  # noqa: E402

PAPER_AUC = {"din": 0.6793, "din_query": 0.6792, "din_nip": 0.6894, "din_con": 0.6819,
             "din_con_diffusion": 0.6890, "queryrec": 0.6972, "dcn": 0.6729}
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                       "RESULTS.md")
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def table(results: dict[str, list[dict]], args) -> str:
    base = np.mean([r["auc"] for r in results["din"]]) if "din" in results else None
    lines = [BEGIN, "", f"## Ablation (`benchmarks/ablation.py`)", "",
             f"Generated log: {args.users} users, {args.items} items, seed {args.data_seed}; "
             f"{args.epochs} epochs, seeds {args.seeds}; test split.", "",
             "| model | test AUC mean | std | vs din | paper AUC (KuaiSAR-small) |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        aucs = [r["auc"] for r in runs]
        rel = f"{(np.mean(aucs) / base - 1) * 100:+.2f}%" if base else "n/a"
        lines.append(f"| {name} | {np.mean(aucs):.4f} | {np.std(aucs):.4f} | {rel} | "
                     f"{PAPER_AUC.get(name, float('nan')):.4f} |")
    return "\n".join(lines + ["", END])


def write_results(text: str) -> None:
    old = open(RESULTS).read() if os.path.exists(RESULTS) else "# Measured results\n"
    if BEGIN in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(RESULTS, "w") as f:
        f.write(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+",
                        default=["din", "din_query", "din_nip", "din_con", "queryrec", "dcn"])
    parser.add_argument("--set", action="append", default=[], help="config overrides for all")
    parser.add_argument("--workdir", default="bench_out/ablation")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    log_dir, data_dir = os.path.join(args.workdir, "log"), os.path.join(args.workdir, "data")
    shutil.rmtree(args.workdir, ignore_errors=True)
    synthetic.generate(log_dir, users=args.users, items=args.items, seed=args.data_seed)
    build_tfrecords.run(["--input", log_dir, "--output", data_dir])
    results: dict[str, list[dict]] = {}
    for name in args.models:
        for seed in args.seeds:
            started = time.perf_counter()
            cfg = load_config(f"configs/{name}.yaml",
                              [f"train.seed={seed}", f"train.epochs={args.epochs}", *args.set])
            model_dir = os.path.join(args.workdir, "models", f"{name}_{seed}")
            train.train(cfg, data_dir, model_dir, verbose=0)
            result = evaluate.evaluate(model_dir, data_dir, "test")
            results.setdefault(name, []).append(result)
            print(f"{name:18s} seed {seed}: test AUC {result['auc']:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    text = table(results, args)
    print(text)
    if not args.no_write:
        write_results(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
