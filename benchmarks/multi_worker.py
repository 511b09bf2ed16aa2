"""Training examples/s and test AUC of one din process against two `--strategy multi_worker`
processes on 127.0.0.1 (one machine: this checks correctness and the cost of the all-reduce,
not a speed-up), on the same config and data. Prints a markdown table.

    python -m benchmarks.multi_worker --data /tmp/data --output /tmp/mw [--set train.epochs=3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from qrec_tf import distribute, evaluate, model_layout


def trainer(data: str, model_dir: str, sets: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "qrec_tf.train", "--config", "configs/din.yaml", "--data", data,
            "--model-dir", model_dir, "--verbose", "2", *extra,
            *[a for s in sets for a in ("--set", s)]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    rows = []
    for workers in (1, 2):
        model_dir = os.path.join(args.output, f"workers{workers}")
        argvs = ([trainer(args.data, model_dir, args.set)] if workers == 1 else
                 [trainer(args.data, model_dir, args.set, "--strategy", "multi_worker")
                  for _ in range(workers)])
        # (The single process's default strategy ignores the TF_CONFIG it gets here.)
        codes = distribute.run_local_cluster(argvs, 3600, os.path.join(model_dir, "logs"))
        if codes != [0] * workers:
            print(f"{workers} worker(s) failed: {codes}; logs in {model_dir}/logs")
            return 1
        run = model_layout.read_run(model_dir)
        out = os.path.join(model_dir, "test.json")
        evaluate.main(["--model-dir", model_dir, "--data", args.data, "--split", "test",
                       "--output", out])
        rows.append((workers, run["examples_per_second"], json.load(open(out))["auc"]))
    print("| workers | examples/s per epoch | test AUC |\n|---|---|---|")
    for workers, rates, auc in rows:
        print(f"| {workers} | {', '.join(f'{r:,.0f}' for r in rates)} | {auc:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
