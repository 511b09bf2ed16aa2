"""Diffusion augmentation: query-item vectors -> a trained DDPM -> the contrastive positives table.

    python -m qrec_tf.augment --data DIR --output DIR
        [--config configs/augment/default.yaml] [--verbose auto|0|1|2]
        [--set train.epochs=50 --set data.max_items=20000 ...] [--force]

When no query needs filling (no click-less query, output.augment_clicked off) the stage writes
the log's positives without training, unless --force (train.force=true).
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from qrec_tf.augment.config import load_augment_config
from qrec_tf.augment.stage import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.augment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--output", required=True,
                        help="receives positives/, the summary and checkpoints (use the --data "
                             "directory for the default model.positives_dir)")
    parser.add_argument("--config", default=None, help="YAML with data/model/train/output "
                                                       "sections (defaults otherwise)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. train.epochs=50")
    parser.add_argument("--force", action="store_true",
                        help="train and run the quality check even when no query needs filling "
                             "(same as --set train.force=true)")
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_augment_config(args.config, args.set)
    except ValueError as error:
        parser.error(str(error))
    if args.force:
        config.train.force = True
    try:
        summary = run(config, args.data, args.output,
                      args.verbose if args.verbose == "auto" else int(args.verbose))
    except (FileNotFoundError, ValueError, OSError) as error:
        parser.error(str(error))
    if not summary["trained"]:
        why = (f"none has fewer than output.top_k={config.output.top_k} clicks"
               if config.output.augment_clicked else "output.augment_clicked off")
        print(f"no query needs filling (no click-less query, {why}): wrote the log's positives for "
              f"{summary['queries']['total']} queries to {summary['positives_dir']} without "
              "training (--force trains)")
        return 0
    quality = summary["quality"]
    print(f"positives for {summary['queries']['total']} queries "
          f"({summary['queries']['clickless_filled']} click-less filled) in "
          f"{summary['positives_dir']}; Recall@{quality['k']} diffusion "
          f"{(quality['diffusion'] or {}).get('recall')} vs popularity "
          f"{(quality['popularity'] or {}).get('recall')}; peak memory "
          f"{summary['memory']['peak_rss_mb']} MiB")
    return 0
