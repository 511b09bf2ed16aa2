"""n_j of DIN's mini-batch aware L2, counted in the unit the penalty is applied in: examples.

The penalty (losses.mini_batch_aware_l2) adds ||w_j||^2 / n_j for every row j that a batch's inputs
touch. Over an epoch row j is touched in about as many batches as there are training examples that
hold it (a batch of 1,024 rarely holds the same rare id twice), so with n_j = that number of
examples every row is pulled by about `embedding_l2 * w_j` per epoch, whatever its frequency: the
regularisation of Zhou et al. (KDD'18), where n_j is "the number of occurrences of feature id j in
all samples".

The Beam job's vocabulary counts are other units (queries: search sessions; items: interactions;
categories: items). A query that a user searched once is in the query list of each of that user's
later feed examples, ~20 on a log with 30 impressions per user, so with the session count as n_j
its row is pulled ~20 times harder than an item's. Measured: with `embedding_l2: 0.1` on vocabulary
counts the contrastive loss of queryrec stays at its chance value, log(64), for five epochs
(docs/RESULTS.md, "QueryRec on logs it was not developed on", part 10). `model.embedding_l2_counts:
rows` counts n_j from the training split before training, with the lookups of the model and only
the features its penalty reads (`CTRModel.penalised_features`).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def count_example_rows(model, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """{vocabulary: int64 [table rows]}: for each row, the number of examples of `dataset` (a
    batched dataset of raw features, or of (features, label)) whose penalised features hold it,
    an example counted once however many times it holds the row. Padding and OOV rows are
    counted too (the penalty gives them weight 0)."""
    tables = model.embedding_tables()
    groups = {vocab: model.penalised_features(vocab) for vocab in tables}
    groups = {vocab: names for vocab, names in groups.items() if names}
    sizes = {vocab: int(tables[vocab].shape[0]) for vocab in groups}

    @tf.function
    def batch_counts(features):
        counts = {}
        for vocab, names in groups.items():
            examples = tf.shape(features[names[0]])[0]
            indices = tf.concat([tf.reshape(model.lookup(name, features[name]), [examples, -1])
                                 for name in names], axis=1)              # [examples, ids]
            ordered = tf.sort(indices, axis=1)
            first = tf.concat([tf.ones([examples, 1], tf.bool),
                               ordered[:, 1:] != ordered[:, :-1]], axis=1)  # once per example
            counts[vocab] = tf.math.bincount(
                tf.cast(tf.boolean_mask(ordered, first), tf.int32), minlength=sizes[vocab],
                maxlength=sizes[vocab], dtype=tf.int64)
        return counts

    totals = {vocab: np.zeros(size, np.int64) for vocab, size in sizes.items()}
    examples = 0
    for batch in dataset:
        features = batch[0] if isinstance(batch, tuple) else batch
        for vocab, counts in batch_counts(features).items():
            totals[vocab] += counts.numpy()
        examples += int(tf.shape(next(iter(features.values())))[0])
    log.info("counted the embedding rows of %d training examples for the mini-batch aware L2",
             examples)
    return totals


def inverse_frequencies(counts: np.ndarray) -> np.ndarray:
    """float32 [rows]: 1 / n_j of per-row counts n_j, 0 for padding and OOV (rows 0 and 1) and
    for rows counted 0 (the penalty never touches them). `Vocabularies.inverse_frequencies` uses
    it too."""
    inverse = np.zeros(counts.shape, np.float32)
    held = counts > 0
    inverse[held] = 1.0 / counts[held]
    inverse[:2] = 0.0
    return inverse
