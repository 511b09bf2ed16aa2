"""How often one training run opens each file of the data directory, and its validation AUC:
run it on two commits (PYTHONPATH=<tree>) to show the reads fall and the numbers stay.

    python -m benchmarks.data_directory_reads --data DIR [--model din --model queryrec ...]
        [--set model.embedding_l2=0.1 ...]

Counts the opens of files under --data through tf.io.gfile.GFile and builtins.open (how the
project reads schema.json, stats.json, the vocabularies and item_categories.tsv; TFRecord shards
are read by tf.data and not counted). Uses only train.train and load_config, which both commits
have, so the same script measures the commit before the data directory was one object.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import os
import tempfile

import tensorflow as tf

from qrec_tf import train
from qrec_tf.config import load_config

TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=256", "train.shuffle_buffer=500", "train.epochs=2",
        "train.deterministic=true"]


def open_counters(data_dir: str):
    """(opened, gfile, open_): a Counter of the opens of files under `data_dir` by their path
    relative to it, and the stand-ins for tf.io.gfile.GFile and builtins.open that count them
    (the caller puts them in place: this script by assignment, the tests with monkeypatch)."""
    opened: collections.Counter = collections.Counter()
    root = os.path.abspath(data_dir)
    real_gfile, real_open = tf.io.gfile.GFile, builtins.open

    def record(path):
        if isinstance(path, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(path))
            if path.startswith(root + os.sep):
                opened[os.path.relpath(path, root)] += 1

    def gfile(name, mode="r"):
        record(name)
        return real_gfile(name, mode)

    def open_(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    return opened, gfile, open_


def counted_run(config, data_dir: str, model_dir: str) -> tuple[dict, dict]:
    real_gfile, real_open = tf.io.gfile.GFile, builtins.open
    opened, gfile, open_ = open_counters(data_dir)
    tf.io.gfile.GFile, builtins.open = gfile, open_
    try:
        summary = train.train(config, data_dir, model_dir, verbose=0)
    finally:
        tf.io.gfile.GFile, builtins.open = real_gfile, real_open
    return summary, dict(sorted(opened.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    out = tempfile.mkdtemp(prefix="data_reads_")
    for name in args.model or ["din", "queryrec", "iv4rec"]:
        config = load_config(f"configs/{name}.yaml", [*TINY, *args.set])
        summary, opened = counted_run(config, args.data, os.path.join(out, name))
        vocab = sum(n for path, n in opened.items() if path.startswith("vocab"))
        others = {k: v for k, v in opened.items() if not k.startswith("vocab")}
        print(f"{name}: val AUC per epoch {summary['history']['val_auc']}; opens: {others}, "
              f"vocab/*.txt {vocab} in all", flush=True)


if __name__ == "__main__":
    main()
