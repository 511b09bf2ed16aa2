"""QueryRec's auxiliary tasks (docs/PAPER.md eqs 13-15), each the one home of its loss, in the
TFRS style: a task holds its weight in eq 16 and the log name of its loss (the model's metric of
that name), and turns the tensors the model hands it into (weight, loss). The model computes
what the task reads (e_qt, the query vectors, item embeddings); the task knows nothing of
lookups."""

from __future__ import annotations

import tensorflow as tf

from qrec_tf import losses
from qrec_tf.layers.contrastive import BilinearSimilarity


class NextItemPrediction:
    """NIP (eqs 13-14, lambda2 = model.din.nip_weight): e_qt scored against the embeddings of
    the items the user clicks next (positives) and is shown without a click (negatives).
    `trains_items` false: the item embeddings enter through a stop_gradient, so NIP trains the
    query side only (docs/ARCHITECTURE.md, "NIP gradient scope")."""

    name = "nip_loss"

    def __init__(self, weight: float, trains_items: bool):
        self.weight, self.trains_items = weight, trains_items

    def __call__(self, e_qt: tf.Tensor, positives: tf.Tensor, positive_mask: tf.Tensor,
                 negatives: tf.Tensor, negative_mask: tf.Tensor) -> tuple[float, tf.Tensor]:
        if not self.trains_items:
            positives, negatives = tf.stop_gradient(positives), tf.stop_gradient(negatives)
        return self.weight, losses.next_item_prediction_loss(e_qt, positives, positive_mask,
                                                             negatives, negative_mask)


class QueryItemContrast:
    """The query-item contrastive loss (eq 15, lambda3 = model.din.contrastive_weight) for q^t =
    the user's last query: its positives (`query_positives`, item indices per query row) against
    `negatives` items drawn uniformly once per batch and shared by every example (as sampled
    softmax does): the negatives' cost, embedding rows and their gradient, is then that of
    `negatives` items, not of that many per example. A drawn item that is one of an example's
    positives is not a negative for it. `similarity`: s(e_q, e_i) (eq 15's bilinear form), a
    layer of the model (so the model tracks and saves its weights)."""

    name = "contrastive_loss"

    def __init__(self, weight: float, similarity: BilinearSimilarity,
                 query_positives: tf.Tensor, item_rows: int, negatives: int,
                 temperature: float):
        self.weight, self.similarity = weight, similarity
        self.query_positives, self.item_rows = query_positives, item_rows
        self.negatives, self.temperature = negatives, temperature

    def __call__(self, last_query: tf.Tensor, query_rows: tf.Tensor,
                 item_embedding) -> tuple[float, tf.Tensor]:
        """`last_query` [B, d]: the last query's text vector; `query_rows` [B]: its row in the
        positives table; `item_embedding`: the item table's layer (indices -> vectors)."""
        positives = tf.gather(self.query_positives, query_rows)                 # [B, P]
        negatives = tf.random.uniform([self.negatives], 2, self.item_rows,
                                      dtype=tf.int64)                           # [N]
        collides = tf.reduce_any(negatives[None, :, None] == positives[:, None, :], axis=-1)
        pos_scores = self.similarity(last_query, item_embedding(positives))     # [B, P]
        neg_scores = self.similarity.pairwise(last_query, item_embedding(negatives))  # [B, N]
        return self.weight, losses.query_item_contrastive_loss(
            pos_scores, positives != 0, neg_scores, ~collides, self.temperature)
