"""Diffusion augmentation: query-item vectors -> a trained DDPM -> the contrastive positives table.

    python -m qrec_tf.augment --data DIR --output DIR
        [--config configs/augment/default.yaml] [--verbose auto|0|1|2]
        [--set train.epochs=50 --set data.max_items=20000 ...]
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
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_augment_config(args.config, args.set)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = run(config, args.data, args.output,
                      args.verbose if args.verbose == "auto" else int(args.verbose))
    except (FileNotFoundError, ValueError, OSError) as error:
        parser.error(str(error))
    quality = summary["quality"]
    print(f"positives for {summary['queries']['total']} queries "
          f"({summary['queries']['clickless_filled']} click-less filled) in "
          f"{summary['positives_dir']}; Recall@{quality['k']} diffusion "
          f"{(quality['diffusion'] or {}).get('recall')} vs popularity "
          f"{(quality['popularity'] or {}).get('recall')}; peak memory "
          f"{summary['memory']['peak_rss_mb']} MiB")
    return 0
