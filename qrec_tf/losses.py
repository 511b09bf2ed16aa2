"""The auxiliary losses of QueryRec (docs/PAPER.md eqs 13-15), as functions of tensors.

Each returns a float32 scalar: the mean over the examples that have something to learn from
(examples without the targets a loss needs are excluded, not counted as zero), 0.0 when none has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


def _mean_over_examples(per_example, included):
    """Mean of per_example [B] over the True entries of included [B]; 0.0 if none."""
    count = ops.sum(ops.cast(included, "float32"))
    total = ops.sum(ops.where(included, per_example, ops.zeros_like(per_example)))
    return total / ops.maximum(count, 1.0)


def _masked_mean(values, mask):
    """Mean of values [B, K] over the True entries of mask [B, K] per row -> ([B], count [B])."""
    count = ops.sum(ops.cast(mask, "float32"), axis=-1)
    total = ops.sum(ops.where(mask, values, ops.zeros_like(values)), axis=-1)
    return total / ops.maximum(count, 1.0), count


def next_item_prediction_loss(query_vec: tf.Tensor, pos_vecs: tf.Tensor, pos_mask: tf.Tensor,
                              neg_vecs: tf.Tensor, neg_mask: tf.Tensor) -> tf.Tensor:
    """NIP, eqs 13-14, with a sigmoid on the dot products.

    Per example: -(1/n_pos) sum_valid log sigmoid(<q, e_p>) - (1/n_neg) sum_valid
    log(1 - sigmoid(<q, e_n>)); a term whose count is 0 contributes 0. Mean over the examples with
    at least one valid target.

    Args:
        query_vec: [B, D], the encoded query list e_{q_t}.
        pos_vecs: [B, P, D] item vectors of later rec clicks; pos_mask bool [B, P].
        neg_vecs: [B, N, D] item vectors of later non-clicks; neg_mask bool [B, N].
    """
    q = ops.cast(query_vec, "float32")
    pos_logits = ops.einsum("bd,bpd->bp", q, ops.cast(pos_vecs, "float32"))
    neg_logits = ops.einsum("bd,bnd->bn", q, ops.cast(neg_vecs, "float32"))
    pos_mask, neg_mask = ops.cast(pos_mask, "bool"), ops.cast(neg_mask, "bool")
    # -log sigmoid(x) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(x), finite for any x.
    pos_term, n_pos = _masked_mean(ops.softplus(-pos_logits), pos_mask)
    neg_term, n_neg = _masked_mean(ops.softplus(neg_logits), neg_mask)
    return _mean_over_examples(pos_term + neg_term, (n_pos + n_neg) > 0)


def query_item_contrastive_loss(pos_scores: tf.Tensor, pos_mask: tf.Tensor,
                                neg_scores: tf.Tensor, neg_mask: tf.Tensor,
                                temperature: float) -> tf.Tensor:
    """Query-item contrastive loss, eq 15, with sampled negatives.

    Per example: -(1/|P|) sum_{p valid} log(exp(s_p / beta) / sum_{n valid} exp(s_n / beta)).
    The denominator holds the negatives only, as the paper writes it (InfoNCE would add the
    positive), so the loss can go below 0. Examples without a valid positive (click-less queries)
    or without a valid negative are excluded.

    Args:
        pos_scores: [B, P] similarities s(e_q, e_i) to the query's positives; pos_mask bool [B, P].
        neg_scores: [B, N] similarities to sampled negatives; neg_mask bool [B, N].
        temperature: beta > 0.
    """
    pos = ops.cast(pos_scores, "float32") / temperature
    neg = ops.cast(neg_scores, "float32") / temperature
    pos_mask, neg_mask = ops.cast(pos_mask, "bool"), ops.cast(neg_mask, "bool")
    # A finite fill (not -inf) keeps a row without negatives free of nan in values and gradients.
    log_denominator = ops.logsumexp(ops.where(neg_mask, neg, ops.full_like(neg, -1e9)), axis=-1)
    per_example, n_pos = _masked_mean(ops.expand_dims(log_denominator, -1) - pos, pos_mask)
    included = ops.logical_and(n_pos > 0, ops.any(neg_mask, axis=-1))
    return _mean_over_examples(per_example, included)
