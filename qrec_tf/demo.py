"""`make demo`: the main job end to end on a bundled KuaiSAR-format sample.

    python -m qrec_tf.demo --output demo_out [--users 300] [--items 2000] [--seed 0]

Steps: generate a KuaiSAR-format log (pipelines.synthetic) -> Beam job (pipelines.build_tfrecords)
-> read a batch back through qrec_tf.data and print where everything was written. Later stages
(training, export, serving) join here as they land.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pipelines import build_tfrecords, synthetic
from qrec_tf import data as D
from qrec_tf import schema as S


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_out", help="everything is written below here")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, force=True, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log_dir = os.path.join(args.output, "kuaisar_sample")
    data_dir = os.path.join(args.output, "data")

    started = time.monotonic()
    print(f"[1/3] generating a KuaiSAR-format sample ({args.users} users, {args.items} items) "
          f"-> {log_dir}", flush=True)
    manifest = synthetic.generate(log_dir, users=args.users, items=args.items, seed=args.seed)
    print("      rows: " + ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items()), flush=True)

    print(f"[2/3] Beam job (DirectRunner) -> {data_dir}", flush=True)
    build_tfrecords.run(["--input", log_dir, "--output", data_dir, "--overwrite"])  # logs a summary

    print("[3/3] reading one training batch through qrec_tf.data", flush=True)
    batch = next(iter(D.make_dataset(data_dir, "train", batch_size=4, seed=args.seed)))
    for name, tensor in batch.items():
        print(f"      {name:22s} {tensor.dtype.name:7s} {tuple(tensor.shape)}")
    print(f"\nDone in {time.monotonic() - started:.0f} s. Written:\n"
          f"  KuaiSAR-format log   {log_dir}/\n"
          f"  TFRecords            {data_dir}/{{train,valid,test}}/\n"
          f"  vocabularies         {data_dir}/{S.VOCAB_DIR}/\n"
          f"  query->items table   {data_dir}/{S.QUERY_ITEMS_DIR}/\n"
          f"  statistics           {data_dir}/{S.STATS_FILE}\n"
          f"  dead letters         {data_dir}/{S.DEAD_LETTER_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
