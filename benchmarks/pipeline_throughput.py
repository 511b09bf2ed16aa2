"""Throughput of the Beam job on a generated KuaiSAR-format log: local runner and portable path.

    python -m benchmarks.pipeline_throughput [--users 3500] [--rec-per-user 290]
        [--workdir bench_out] [--no-portable] [Beam options for the local run]

Prints input rows/s for the whole job and the projected time for a KuaiSAR-small-sized log
(7.5M feed + 3.2M search rows, the issue's target: under 15 minutes on 2 cores). Then runs the
same job on the same log through Beam's portability framework (pipelines.local_cluster: job
service + one external SDK worker, the path of Dataflow / Flink / Spark), checks that stats.json
is the same, and prints the ratio of the two rates. Everything is measured in this one run (the
machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

from pipelines import build_tfrecords, local_cluster, synthetic

KUAISAR_SMALL_ROWS = 7_490_000 + 3_170_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # KuaiSAR-small's shape: 25,877 users with ~290 feed and ~122 search rows each (~10 shown
    # items per session); 3,500 such users give ~1M feed rows.
    parser.add_argument("--users", type=int, default=3_500)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--rec-per-user", type=int, default=290)
    parser.add_argument("--sessions-per-user", type=int, default=12)
    parser.add_argument("--workdir", default="bench_out")
    parser.add_argument("--keep", action="store_true", help="keep the generated log and outputs")
    parser.add_argument("--no-portable", action="store_true",
                        help="skip the run on the portable path (pipelines.local_cluster)")
    args, beam_args = parser.parse_known_args()
    log_dir, out_dir = os.path.join(args.workdir, "log"), os.path.join(args.workdir, "out")
    shutil.rmtree(args.workdir, ignore_errors=True)

    t0 = time.monotonic()
    manifest = synthetic.generate(log_dir, users=args.users, items=args.items, seed=1,
                                  rec_per_user=args.rec_per_user,
                                  sessions_per_user=args.sessions_per_user)
    t_gen = time.monotonic() - t0
    rows = manifest["rows"]
    total = sum(rows.values())
    print(f"generated {total:,} rows in {t_gen:.1f} s: {rows}", flush=True)

    t0 = time.monotonic()
    stats = build_tfrecords.run(["--input", log_dir, "--output", out_dir, *beam_args])
    elapsed = time.monotonic() - t0
    peak_gb = max(resource.getrusage(who).ru_maxrss
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1e6
    examples = sum(stats["examples"][s]["count"] for s in ("train", "valid", "test"))
    rate = total / elapsed
    print(f"\npipeline: {elapsed:.1f} s for {total:,} input rows -> {rate:,.0f} rows/s; "
          f"{examples:,} examples ({examples / elapsed:,.0f} examples/s); "
          f"peak RSS of one process {peak_gb:.1f} GB")
    projected = KUAISAR_SMALL_ROWS / rate
    print(f"projected KuaiSAR-small ({KUAISAR_SMALL_ROWS:,} rows): {projected / 60:.1f} min "
          f"(target < 15 min; ratio target/projected = {15 * 60 / projected:.2f})")
    if not args.no_portable:
        portable_rate = run_portable(log_dir, os.path.join(args.workdir, "portable"), total,
                                     stats)
        print(f"portable / local rows/s = {portable_rate / rate:.2f}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


def run_portable(log_dir: str, out_dir: str, total_rows: int, local_stats: dict) -> float:
    """The same job through pipelines.local_cluster; its input rows/s (job submission, staging
    and the run; not the cluster's start-up)."""
    with local_cluster.local_cluster() as cluster:
        t0 = time.monotonic()
        code = cluster.run([sys.executable, "-m", "pipelines.build_tfrecords", "--input", log_dir,
                            "--output", out_dir])
        elapsed = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"the portable run failed with status {code}")
    with open(os.path.join(out_dir, "stats.json")) as f:
        same = json.load(f) == local_stats
    rate = total_rows / elapsed
    print(f"portable path (job service + 1 external SDK worker): {elapsed:.1f} s -> "
          f"{rate:,.0f} rows/s; stats.json {'the same' if same else 'DIFFERENT'} as locally")
    if not same:
        raise SystemExit("stats.json differs between the local and the portable run")
    return rate


if __name__ == "__main__":
    main()
