"""Generation: the top-K items the trained model gives a query, and the positives table."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.augment.config import AugmentOutputConfig
from qrec_tf.augment.vectors import DenseRows, ItemSpace, QueryItemTable
from qrec_tf.layers.diffusion import GaussianDiffusion


def top_k_in_batches(scores: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], rows: np.ndarray,
                     k: int, batch_size: int, progress: keras.utils.Progbar | None = None
                     ) -> np.ndarray:
    """The k best columns of every row's scores, computed batch_size rows at a time.

    scores(batch_rows int64 [b], start int64 scalar) -> float32 [b, N]: the scores of rows
    rows[start:start + b]; -inf marks a column that must not be picked. Only one [b, N] batch
    (with b <= batch_size) exists at a time, never [len(rows), N]: at N = 2M items a
    1,000-query batch is already 8 GB. Each batch goes through tf.math.top_k, whose ties put the
    lower column first, so the result equals a dense top-k with a stable order.

    Returns: int32 [len(rows), min(k, N)] columns, best first; -1 where fewer columns than k
    have a finite score.
    """

    @tf.function(reduce_retracing=True)
    def best(batch_rows: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        batch_scores = scores(batch_rows, start)
        values, indices = tf.math.top_k(batch_scores, tf.minimum(k, tf.shape(batch_scores)[1]))
        return tf.where(tf.math.is_inf(values), -1, indices)

    out = None
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        batch = best(tf.constant(rows[start:stop], tf.int64), tf.constant(start, tf.int64))
        if out is None:
            out = np.full((len(rows), batch.shape[1]), -1, np.int32)
        out[start:stop] = batch.numpy()
        if progress is not None:
            progress.add(stop - start)
    return out if out is not None else np.full((0, k), -1, np.int32)


def batch_size_for(output: AugmentOutputConfig, bytes_per_query: float) -> int:
    """Queries per generation batch: output.batch_size, lowered so that their buffers
    (bytes_per_query each) fit in output.batch_memory_mb; never below one."""
    return max(1, min(output.batch_size, int(output.batch_memory_mb * 2 ** 20 // bytes_per_query)))


def generation_batch_size(output: AugmentOutputConfig, steps: int, items: int) -> int:
    """Queries per generation batch of the dense diffusion: its ~(4 + T) N float32 buffers
    (input, step outputs, scores; T = model.steps) per query fit in output.batch_memory_mb."""
    return batch_size_for(output, (4 + steps) * items * 4)


# (batch_row int32 [E], column int32 [E], positive bool [E], batch int32 scalar, noise seed int64
# [2]) -> float32 [batch, N]: a model's item scores for the batch's queries, given their entries.
ItemScores = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def dense_item_scores(diffusion: GaussianDiffusion, dense: DenseRows) -> ItemScores:
    """The dense diffusion's scores: the denoised x_q of each query."""

    def scores(batch_row: tf.Tensor, column: tf.Tensor, positive: tf.Tensor, batch: tf.Tensor,
               noise_seed: tf.Tensor) -> tf.Tensor:
        x = dense.scatter(batch_row, column, dense.values(positive), batch)
        noise = None
        if diffusion.sampling_steps > 0:   # the clean x is denoised otherwise: no noise needed
            noise = tf.random.stateless_normal(tf.shape(x), noise_seed)
        return diffusion.denoise(x, noise)

    return scores


def rank_items(item_scores: ItemScores, dense: DenseRows, rows: np.ndarray, k: int,
               exclude_positives: bool, batch_size: int, seed: int,
               progress: keras.utils.Progbar | None = None) -> np.ndarray:
    """int [len(rows), k] item-space columns, best first: the model's scores of each row
    (`dense_item_scores`, or the latent model's), without its negatives (and positives, if
    exclude_positives); -1 where fewer than k are left. batch_size rows at a time
    (top_k_in_batches)."""
    k = min(k, dense.items)

    def scores(batch_rows: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(batch_rows)[0]
        batch_row, column, positive = dense.entries(batch_rows)
        predicted = item_scores(batch_row, column, positive, batch,
                                tf.stack([tf.constant(seed, tf.int64), -1 - start]))
        excluded = ~positive | exclude_positives
        return tf.tensor_scatter_nd_update(
            predicted, tf.boolean_mask(tf.stack([batch_row, column], axis=1), excluded),
            tf.fill([tf.reduce_sum(tf.cast(excluded, tf.int32))], -np.inf))

    return top_k_in_batches(scores, rows, k, batch_size, progress)


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
