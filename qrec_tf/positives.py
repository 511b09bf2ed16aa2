"""The contrastive loss's positives per query (I+_q of eq 15, docs/PAPER.md), as item indices.

Two sources: the Beam job's query_items/ table (items clicked after the query in the search log;
click-less queries have none and are masked out of the loss), or the diffusion stage's table,
which also fills click-less queries: `python -m qrec_tf.augment --output DIR` writes it to
DIR/positives/*.tfrecord.gz (POSITIVES_SPEC, one record per query, gzip), and training reads it
from model.positives_dir (default <data>/positives).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from qrec_tf import data, layout
from qrec_tf import schema as S

POSITIVES_DIR = layout.POSITIVES_DIR   # <data>/positives/ (qrec_tf.layout)
POSITIVES_SPEC = {"query_key": tf.io.FixedLenFeature((), tf.string),
                  "item_ids": tf.io.VarLenFeature(tf.int64)}


def _records(pattern: str):
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    return tf.data.TFRecordDataset(files, compression_type=S.COMPRESSION)


def log_positives(data_dir: str) -> dict[str, list[int]]:
    """query key -> clicked item ids, most clicked first (ties: smaller id first)."""
    table = {}
    for row in data.query_items(data_dir):
        items, counts = row[S.QI_CLICKED_ITEM_IDS], row[S.QI_CLICK_COUNTS]
        table[row[S.QI_QUERY_KEY]] = [i for _, i in sorted(zip((-c for c in counts), items))]
    return table


def positives_path(data_dir: str, positives_dir: str | None = None) -> str:
    """The directory holding the table's shards: positives_dir, or its positives/ subdirectory
    when positives_dir is an augment --output directory; <data_dir>/positives by default."""
    if positives_dir is None:
        return os.path.join(data_dir, POSITIVES_DIR)
    nested = os.path.join(positives_dir, POSITIVES_DIR)
    if not _shards(positives_dir) and _shards(nested):
        return nested
    return positives_dir


def _shards(directory: str) -> list[str]:
    return sorted(tf.io.gfile.glob(os.path.join(directory, "*.tfrecord.gz")))


def write(table: dict[str, list[int]], output_dir: str) -> str:
    """Writes the table to <output_dir>/positives/ (one gzip shard, queries sorted by key),
    replacing any previous table; returns the shard's path. The shard is written under a
    temporary name and renamed, so a reader never sees half a table."""
    directory = os.path.join(output_dir, POSITIVES_DIR)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, "positives-00000-of-00001.tfrecord.gz")
    partial = path + ".partial"
    with tf.io.TFRecordWriter(partial, options=S.COMPRESSION) as writer:
        for key in sorted(table):
            example = tf.train.Example(features=tf.train.Features(feature={
                "query_key": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[key.encode("utf-8")])),
                "item_ids": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[int(i) for i in table[key]]))}))
            writer.write(example.SerializeToString())
    for old in _shards(directory):
        tf.io.gfile.remove(old)
    tf.io.gfile.rename(partial, path, overwrite=True)
    return path


def diffusion_positives(data_dir: str, positives_dir: str | None = None) -> dict[str, list[int]]:
    """query key -> item ids from the augment stage's table (see positives_path)."""
    table = {}
    for record in _records(os.path.join(positives_path(data_dir, positives_dir),
                                        "*.tfrecord.gz")):
        row = tf.io.parse_single_example(record, POSITIVES_SPEC)
        table[row["query_key"].numpy().decode()] = tf.sparse.to_dense(
            row["item_ids"]).numpy().tolist()
    return table


def positives_matrix(table: dict[str, list[int]], query_values: list[str], item_values: list[int],
                     k: int) -> np.ndarray:
    """[2 + len(query_values), k] item indices (0 = none) aligned with the query lookup's indices
    (0 pad, 1 OOV, then vocabulary order); items outside the item vocabulary are skipped."""
    item_index = {item: i + 2 for i, item in enumerate(item_values)}
    matrix = np.zeros((len(query_values) + 2, k), np.int64)
    for row, key in enumerate(query_values, start=2):
        indices = [item_index[i] for i in table.get(key, []) if i in item_index][:k]
        matrix[row, :len(indices)] = indices
    return matrix


def load(data_dir: str, source: str, positives_dir: str | None = None
         ) -> tuple[dict[str, list[int]], str]:
    """The positives table for `source` ("log", "diffusion", "auto") and the source used;
    the diffusion table is read from positives_dir (None: <data_dir>/positives)."""
    directory = positives_path(data_dir, positives_dir)
    has_diffusion = bool(_shards(directory))
    if source == "diffusion" and not has_diffusion:
        raise FileNotFoundError(f"model.positives=diffusion but {directory}/ has no table: run "
                                f"`python -m qrec_tf.augment --data {data_dir} --output DIR` "
                                "first (and set model.positives_dir=DIR/positives unless DIR is "
                                "the data directory), or use log/auto")
    if source == "diffusion" or (source == "auto" and has_diffusion):
        return diffusion_positives(data_dir, positives_dir), "diffusion"
    return log_positives(data_dir), "log"
