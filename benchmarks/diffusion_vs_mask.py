"""Paper sec 5.6: contrastive learning with diffusion positives vs masking click-less queries.

    python -m benchmarks.diffusion_vs_mask [--users 4000] [--queries-per-subtopic 300]
        [--seeds 0 1 2 3 4] [--epochs 3] [--set model.embedding_dim=16 ...]
        [--augment-set train.epochs=40 ...] [--bootstrap 10000]
        [--workdir bench_out/diffusion_vs_mask] [--reuse] [--no-write]

Generates one KuaiSAR-format log (pipelines.synthetic), runs the Beam job and the augment stage
(configs/augment/default.yaml) once, then trains with each seed
  - din_con: the contrastive loss (eq 15) skips examples whose last query has no click (mask),
  - din_con_diffusion: the same model whose click-less queries get generated positives,
and evaluates both on the test split. The seeds pair the runs (same initialisation and data
order), so the statistic is the per-seed AUC difference (diffusion - mask): its mean, a bootstrap
95% confidence interval over seeds, and the bootstrap share of resampled means <= 0 (a one-sided
p-value). It also counts the training examples whose last query is click-less: the only
examples on which the two models' losses differ. Writes the section between the
diffusion_vs_mask markers of docs/RESULTS.md. The data, augment and training machinery (and its
options) are benchmarks/ablation.py's: with --reuse and the ablation's --workdir, the seeds the
ablation already ran are not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks import ablation  # the shared machinery: one log, one Beam run, the seeds
from qrec_tf import augment, positives
from qrec_tf import schema as S
from qrec_tf.data import make_dataset

BEGIN, END = "<!-- diffusion_vs_mask:begin -->", "<!-- diffusion_vs_mask:end -->"
ARMS = ("din_con", "din_con_diffusion")


def bootstrap(differences: np.ndarray, draws: int, seed: int = 0) -> dict:
    """Mean of `differences`, a percentile 95% interval of resampled means, and the share of
    resampled means <= 0."""
    rng = np.random.default_rng(seed)
    means = rng.choice(differences, (draws, len(differences)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(differences.mean()), "low": float(low), "high": float(high),
            "p_not_positive": float((means <= 0).mean())}


def clickless_last_query_share(data_dir: str) -> tuple[int, int]:
    """(train examples whose last query has no clicked item in the log, train examples)."""
    clickless = {key.encode() for key, items in positives.log_positives(data_dir).items()
                 if not items}
    affected = total = 0
    for batch in make_dataset(data_dir, "train", 4096, shuffle=False, features=[S.QUERY_KEYS]):
        last = batch[S.QUERY_KEYS][:, -1].numpy()
        affected += sum(key in clickless for key in last)
        total += len(last)
    return affected, total


def augment_line(summary: dict, overrides: str) -> str:
    """The augment stage's counts and quality check in one sentence."""
    quality, queries = summary["quality"], summary["queries"]
    head = (f"Augment stage (configs/augment/default.yaml{overrides}): {queries['total']} "
            f"queries, {queries['clickless']} without a click")
    if not summary.get("trained", True):
        return (f"{head}: nothing to fill, so the stage wrote the log's positives untrained and "
                "both arms read the same table.")
    return (f"{head} ({queries['clickless_filled']} filled); held-out clicks of "
            f"{quality['queries']} queries: Recall@{quality['k']} "
            f"{quality['diffusion']['recall']:.4f} / NDCG@{quality['k']} "
            f"{quality['diffusion']['ndcg']:.4f} (popularity {quality['popularity']['recall']:.4f}"
            f" / {quality['popularity']['ndcg']:.4f}); {summary['training']['seconds']:.0f} s "
            f"training, peak memory {summary['memory']['peak_rss_mb']:.0f} MiB.")


def section(args, aucs: dict[str, list[float]], stats: dict, summary: dict, affected: tuple,
            seconds: float) -> str:
    overrides = "".join(f", {override}" for override in args.augment_set)
    differences = np.array(aucs[ARMS[1]]) - np.array(aucs[ARMS[0]])
    lines = [BEGIN, "", "## Diffusion positives vs masking click-less queries "
             "(`benchmarks/diffusion_vs_mask.py`, paper sec 5.6)", "",
             f"{ablation.describe_run(args)}; {seconds / 60:.1f} min in all.",
             "",
             augment_line(summary, overrides), "",
             f"Training examples whose last query is click-less (where the two arms differ): "
             f"{affected[0]:,} of {affected[1]:,} ({affected[0] / max(1, affected[1]):.2%}).", "",
             "| seed | din_con (mask) | din_con_diffusion | difference |", "|---|---|---|---|"]
    for seed, mask, diffusion in zip(args.seeds, aucs[ARMS[0]], aucs[ARMS[1]]):
        lines.append(f"| {seed} | {mask:.4f} | {diffusion:.4f} | {diffusion - mask:+.4f} |")
    lines += ["", f"Mean AUC difference {stats['mean']:+.4f}, bootstrap 95% CI "
              f"[{stats['low']:+.4f}, {stats['high']:+.4f}] ({args.bootstrap:,} resamples of the "
              f"{len(differences)} seeds); share of resampled means <= 0: "
              f"{stats['p_not_positive']:.3f}. Paper: diffusion positives beat masking "
              "(p < 0.05) on KuaiSAR.", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ablation.add_arguments(parser, list(ARMS), "bench_out/diffusion_vs_mask")
    parser.set_defaults(seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--bootstrap", type=int, default=10_000)
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least two seeds for a confidence interval")
    if sorted(args.models) != sorted(ARMS):
        parser.error(f"this benchmark compares {ARMS}: leave --models out")

    started = time.perf_counter()
    results = ablation.run_models(args)
    data_dir = os.path.join(args.workdir, "data")
    with open(os.path.join(args.workdir, "augment", augment.SUMMARY_FILE)) as f:
        summary = json.load(f)
    aucs = {arm: [r["auc"] for r in results[arm]] for arm in ARMS}
    stats = bootstrap(np.array(aucs[ARMS[1]]) - np.array(aucs[ARMS[0]]), args.bootstrap)
    text = section(args, aucs, stats, summary, clickless_last_query_share(data_dir),
                   time.perf_counter() - started)
    print(text)
    if not args.no_write:
        ablation.write_results(text, BEGIN, END)
        print(f"written to {ablation.RESULTS}")


if __name__ == "__main__":
    main()
