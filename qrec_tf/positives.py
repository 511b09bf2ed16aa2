"""The contrastive loss's positives per query (I+_q of PAPER eq 15), as item indices.

Two sources: the Beam job's query_items/ table (items clicked after the query in the search log;
click-less queries have none and are masked out of the loss), or the diffusion stage's table
(<data>/positives/, written by `python -m qrec_tf.augment`), which also fills click-less queries.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from qrec_tf import schema as S

POSITIVES_DIR = "positives"
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
    for record in _records(os.path.join(data_dir, S.QUERY_ITEMS_DIR, "*.tfrecord.gz")):
        row = tf.io.parse_single_example(record, S.QUERY_ITEMS_SPEC)
        items = tf.sparse.to_dense(row[S.QI_CLICKED_ITEM_IDS]).numpy().tolist()
        counts = tf.sparse.to_dense(row[S.QI_CLICK_COUNTS]).numpy().tolist()
        table[row[S.QI_QUERY_KEY].numpy().decode()] = [
            i for _, i in sorted(zip((-c for c in counts), items))]
    return table


def diffusion_positives(data_dir: str) -> dict[str, list[int]]:
    table = {}
    for record in _records(os.path.join(data_dir, POSITIVES_DIR, "*.tfrecord.gz")):
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


def load(data_dir: str, source: str) -> tuple[dict[str, list[int]], str]:
    """The positives table for `source` ("log", "diffusion", "auto") and the source used."""
    has_diffusion = bool(tf.io.gfile.glob(os.path.join(data_dir, POSITIVES_DIR, "*.tfrecord.gz")))
    if source == "diffusion" and not has_diffusion:
        raise FileNotFoundError(f"model.positives=diffusion but {data_dir}/{POSITIVES_DIR}/ has no "
                                "table: run `python -m qrec_tf.augment` first, or use log/auto")
    if source == "diffusion" or (source == "auto" and has_diffusion):
        return diffusion_positives(data_dir), "diffusion"
    return log_positives(data_dir), "log"
