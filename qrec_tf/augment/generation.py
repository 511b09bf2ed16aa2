"""Generation: the top-K items the trained model gives a query, and the positives table."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.augment.vectors import DenseRows, ItemSpace, QueryItemTable
from qrec_tf.layers.diffusion import GaussianDiffusion


def rank_items(diffusion: GaussianDiffusion, dense: DenseRows, rows: np.ndarray, k: int,
               exclude_positives: bool, batch_size: int, seed: int,
               progress: keras.utils.Progbar | None = None) -> np.ndarray:
    """int [len(rows), k] item-space columns, best first: the denoised x_q of each row, without
    its negatives (and positives, if exclude_positives); -1 where fewer than k are left."""
    k = min(k, dense.items)

    @tf.function(reduce_retracing=True)
    def top_k(batch_rows: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(batch_rows)[0]
        batch_row, column, positive = dense.entries(batch_rows)
        x = dense.scatter(batch_row, column, dense.values(positive), batch)
        noise = tf.random.stateless_normal(tf.shape(x), tf.stack(
            [tf.constant(seed, tf.int64), -1 - step]))
        scores = diffusion.denoise(x, noise)
        excluded = ~positive | exclude_positives
        blocked = tf.scatter_nd(tf.stack([batch_row, column], axis=1),
                                tf.cast(excluded, tf.float32), tf.shape(scores)) > 0
        scores = tf.where(blocked, -np.inf, scores)
        values, indices = tf.math.top_k(scores, k)
        return tf.where(tf.math.is_inf(values), -1, indices)

    out = np.full((len(rows), k), -1, np.int32)
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        out[start:stop] = top_k(tf.constant(rows[start:stop], tf.int64),
                                tf.constant(start, tf.int64)).numpy()
        if progress is not None:
            progress.add(stop - start)
    return out


def positives_table(table: QueryItemTable, space: ItemSpace, generated: dict[int, np.ndarray],
                    top_k: int) -> dict[str, list[int]]:
    """query key -> item ids: clicks (most clicked first, ties: smaller id), then the query's
    generated items (item-space columns, -1 = none) until top_k; a query that is not in
    `generated` keeps only its clicks."""
    order = np.lexsort((table.clicked_items, -table.click_counts, table.clicked_rows))
    splits = np.searchsorted(table.clicked_rows[order], np.arange(len(table.keys) + 1))
    clicked = table.clicked_items[order]
    result = {}
    for row, key in enumerate(table.keys):
        items = clicked[splits[row]:splits[row + 1]].tolist()
        if row in generated:
            extra = [int(space.item_ids[c]) for c in generated[row] if c >= 0]
            items += extra[:max(0, top_k - len(items))]
        result[key] = items
    return result
