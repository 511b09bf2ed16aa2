"""SESRec's split of feed and search interests into similar and dissimilar ones (Si et al., "When
Search Meets Recommendation: Learning Disentangled Search Representation for Recommendation",
SIGIR 2023, sec. 4.3 "interest disentanglement")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

from qrec_tf.layers.dense_stack import masked_mean

if TYPE_CHECKING:
    import tensorflow as tf

_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="qrec_tf")
class InterestContrast(keras.layers.Layer):
    """Co-attention between two encoded sequences, the split of each into positions similar and
    dissimilar to the other, and the triplet loss that keeps the two parts apart.

    With R the feed sequence [r_len, dim] and S the search sequence [s_len, dim] of one row:
    - affinity L = tanh(R W S^T) [r_len, s_len] (W [dim, dim]);
    - scores of R's positions w_s^T S^T L^T [r_len] and of S's positions w_r^T R^T L [s_len]
      (w_r, w_s [dim]); a softmax over the valid positions gives the weights a_R, a_S;
    - similar positions: valid ones with weight >= 1 / n (n = valid positions of the sequence),
      dissimilar: valid ones below; a set that comes out empty (one valid position, or all
      weights equal) is replaced by all valid positions, as in the SESRec code;
    - triplet loss of a sequence: max(d(anchor, mean of similar) - d(anchor, mean of dissimilar)
      + margin, 0) with anchor = sum_t a_t x_t and d the Euclidean distance; its mean over the
      rows that have a valid position; `loss` = feed term + search term.
    The split is a selection (no gradient); the loss trains the encoders and the co-attention.
    Padded positions are read as zeros: the values they hold change nothing.

    Call: rec [batch, r_len, dim], rec_mask bool [batch, r_len] (True = real), src [batch, s_len,
    dim], src_mask bool [batch, s_len] -> dict with "rec_similar", "rec_dissimilar" bool
    [batch, r_len], "src_similar", "src_dissimilar" bool [batch, s_len], "rec_weights" [batch,
    r_len], "src_weights" [batch, s_len] (0 at padding) and "loss" (float32 scalar).
    """

    def __init__(self, dim: int, margin: float = 1.0, kernel_initializer: Any = "glorot_uniform",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.dim, self.margin = dim, margin
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, rec_shape: tuple, rec_mask_shape: tuple | None = None,
              src_shape: tuple | None = None, src_mask_shape: tuple | None = None) -> None:
        self.affinity = self.add_weight(name="affinity", shape=(self.dim, self.dim),
                                        initializer=self.kernel_initializer)
        self.rec_scorer = self.add_weight(name="rec_scorer", shape=(self.dim,),
                                          initializer="random_normal")
        self.src_scorer = self.add_weight(name="src_scorer", shape=(self.dim,),
                                          initializer="random_normal")

    def call(self, rec: tf.Tensor, rec_mask: tf.Tensor, src: tf.Tensor,
             src_mask: tf.Tensor) -> dict:
        rec_mask, src_mask = ops.cast(rec_mask, "bool"), ops.cast(src_mask, "bool")
        # Padded positions become zeros, so the values they hold never reach a score.
        rec = ops.where(ops.expand_dims(rec_mask, -1), ops.cast(rec, "float32"), 0.0)
        src = ops.where(ops.expand_dims(src_mask, -1), ops.cast(src, "float32"), 0.0)
        affinity = ops.tanh(ops.einsum("brd,de,bse->brs", rec, self.affinity, src))
        # w_s^T S^T L^T scores R's positions; w_r^T R^T L scores S's positions.
        rec_scores = ops.einsum("bsd,d,brs->br", src, self.src_scorer, affinity)
        src_scores = ops.einsum("brd,d,brs->bs", rec, self.rec_scorer, affinity)
        out = {}
        loss = 0.0
        for name, seq, scores, mask in (("rec", rec, rec_scores, rec_mask),
                                        ("src", src, src_scores, src_mask)):
            weights = _masked_softmax(scores, mask)
            similar, dissimilar = _split(weights, mask)
            anchor = ops.einsum("bt,btd->bd", weights, seq)
            gap = (_distance(anchor, masked_mean(seq, similar, 1))
                   - _distance(anchor, masked_mean(seq, dissimilar, 1)))
            per_row = ops.relu(gap + self.margin)
            has_any = ops.cast(ops.any(mask, axis=-1), "float32")
            loss = loss + ops.sum(per_row * has_any) / ops.maximum(ops.sum(has_any), 1.0)
            out.update({f"{name}_similar": similar, f"{name}_dissimilar": dissimilar,
                        f"{name}_weights": weights})
        out["loss"] = loss
        return out

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        return None

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "margin": self.margin,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def _masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the True positions of each row; all zeros for a row without any."""
    weights = ops.softmax(ops.where(mask, scores, ops.full_like(scores, _MASKED_SCORE)), axis=-1)
    return ops.where(mask, weights, ops.zeros_like(weights))


def _split(weights: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(similar, dissimilar) bool [batch, len]: valid positions with weight >= 1/n and below;
    an empty set becomes all valid positions."""
    count = ops.sum(ops.cast(mask, "float32"), axis=-1, keepdims=True)
    threshold = 1.0 / ops.maximum(count, 1.0)
    similar = ops.logical_and(mask, weights >= threshold)
    dissimilar = ops.logical_and(mask, weights < threshold)
    similar = ops.where(ops.any(similar, axis=-1, keepdims=True), similar, mask)
    dissimilar = ops.where(ops.any(dissimilar, axis=-1, keepdims=True), dissimilar, mask)
    return similar, dissimilar


def _distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Euclidean distance per row; the small constant keeps the gradient finite at 0."""
    return ops.sqrt(ops.sum(ops.square(a - b), axis=-1) + 1e-12)
