"""SESRec (Si et al., "When Search Meets Recommendation: Learning Disentangled Search
Representation for Recommendation", SIGIR 2023) baseline of table 4.

- Feed sequence: the feed-clicked items before t, each [item || category || sub-category]
  embedding projected to dim by a Dense layer (the target item too), encoded by a
  self-attention encoder (`SASEncoder`, every position).
- Search sequence: per query before t, its embedding (`QueryEmbedding`) plus the mean embedding of
  the items clicked in its session (`query_clicked_item_ids`), encoded by a second encoder.
- Query-item alignment (SESRec's InfoNCE): for every (query, item clicked after it) pair of the
  search history, s(q, i) = tanh(q^T W i) (`BilinearSimilarity`) against
  `sesrec.contrastive_negatives` items drawn uniformly from the catalogue, and symmetrically s(i, q)
  against as many queries drawn from the batch's search histories; a negative equal to the
  pair's own item (query) is dropped. Loss = mean over pairs of -log(exp(s+/T) / (exp(s+/T) +
  sum exp(s-/T))), T = sesrec.contrastive_temperature, averaged over the two directions.
- Interest disentanglement (`InterestContrast`): co-attention between the two encoded sequences
  splits each into interests similar and dissimilar to the other, with a triplet loss.
- Prediction: each sequence pooled by target attention (softmax over the positions) three times:
  over all its positions, its similar ones and its dissimilar ones; [e_u || e_xu || author ||
  target item || the six pooled vectors] -> MLP -> logit.
L = L_ctr + alignment_weight * L_align + triplet_weight * L_triplet (model.sesrec).

Differences from the reference code, all to fit this project's pieces: the encoders are causal
(`SASEncoder`, as QueryRec's), target attention is DIN's activation unit instead of a bilinear
form, the InfoNCE temperature is fixed, and negative queries come from the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import keras
import tensorflow as tf

from qrec_tf import losses
from qrec_tf import schema as S
from qrec_tf.config import ModelConfig, check_ranges
from qrec_tf.layers.contrastive import BilinearSimilarity
from qrec_tf.layers.dense_stack import masked_mean
from qrec_tf.layers.interest_contrast import InterestContrast
from qrec_tf.layers.query_embedding import SparseQueryEmbedding
from qrec_tf.layers.sas_encoder import SASEncoder
from qrec_tf.models.base import CTRModel, Vocabularies


@dataclasses.dataclass
class SESRecConfig:
    """model.sesrec: the two encoders (SASEncoder blocks, heads, dropout), the query-item
    alignment (InfoNCE: its weight, temperature and sampled negatives), and the interest
    triplet loss's weight and margin."""

    sas_blocks: int = 2
    sas_heads: int = 1
    sas_dropout: float = 0.2
    alignment_weight: float = 0.1
    contrastive_temperature: float = 0.2
    contrastive_negatives: int = 64
    triplet_weight: float = 0.1
    triplet_margin: float = 1.0

    def validate(self, model: ModelConfig) -> None:
        check_ranges(self, "sesrec", ("sas_blocks", "sas_heads", "contrastive_negatives"),
                     ("alignment_weight", "triplet_weight", "triplet_margin"))
        if self.contrastive_temperature <= 0:
            raise ValueError("model.sesrec.contrastive_temperature must be > 0")
        if model.embedding_dim % self.sas_heads:
            raise ValueError("model.embedding_dim must be divisible by model.sesrec.sas_heads")


class SESRecModel(CTRModel):
    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 **kwargs):
        super().__init__(config, schema, vocabularies, **kwargs)
        d = config.embedding_dim
        self.query_embedding = SparseQueryEmbedding(
            vocabularies.size(S.VOCAB_QUERIES), vocabularies.size(S.VOCAB_WORDS), d,
            name="query_embedding")
        self.feed_encoder, self.search_encoder = (
            SASEncoder(length, d, num_blocks=config.sesrec.sas_blocks,
                       num_heads=config.sesrec.sas_heads, dropout=config.sesrec.sas_dropout,
                       name=f"{name}_encoder")
            for name, length in (("feed", schema.history_length), ("search", schema.max_queries)))
        # [item || category || sub-category] -> dim: the feed sequence and the attention's target
        # see an item's categories, as DIN's history does (clicks follow categories).
        self.item_projection = keras.layers.Dense(d, name="item_projection")
        self.interests = InterestContrast(d, margin=config.sesrec.triplet_margin, name="interests")
        # configs/sesrec.yaml: softmax weights, so the pooled similar and dissimilar parts are
        # comparable averages (as in SESRec).
        self.feed_attention, self.search_attention = (
            self.din_attention(f"{name}_attention") for name in ("feed", "search"))
        self.similarity = BilinearSimilarity(d, name="query_item_similarity")
        self.similarity.build((None, d))   # training-only: build before the optimizer is
        self.item_rows = vocabularies.values_end(S.VOCAB_ITEMS)  # negatives: values only
        self.make_ctr_head()

    def aux_loss_names(self):
        return (*(["alignment_loss"] if self.config.sesrec.alignment_weight else []),
                *(["triplet_loss"] if self.config.sesrec.triplet_weight else []))

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        cfg = self.config
        _, target = self.item_representation(
            features[S.ITEM_ID], features[S.CATEGORY_ID], features[S.SUBCATEGORY_ID])
        target_item = self.item_projection(target)                                # [B, d]
        hist_idx, history = self.item_representation(
            features[S.HIST_ITEM_IDS], features[S.HIST_CATEGORY_IDS],
            features[S.HIST_SUBCATEGORY_IDS])                                      # [B, H, 3d]
        feed_mask = hist_idx != 0
        key_idx = self.lookup(S.QUERY_KEYS, features[S.QUERY_KEYS])
        queries = self.query_embedding(
            key_idx, self.lookup(S.QUERY_WORD_IDS, features[S.QUERY_WORD_IDS]))  # [B, Q, d]
        query_mask = key_idx != 0
        clicked_idx = self.lookup(S.QUERY_CLICKED_ITEM_IDS, features[S.QUERY_CLICKED_ITEM_IDS])
        clicked = self.embed(S.ITEM_ID, clicked_idx)                               # [B, Q, C, d]
        clicked_mask = tf.logical_and(clicked_idx != 0, query_mask[..., None])
        clicked_mean = masked_mean(clicked, clicked_mask, 2)                      # [B, Q, d]

        feed_seq = self.feed_encoder(self.item_projection(history), feed_mask,
                                     training=training, return_sequences=True)
        search_seq = self.search_encoder(queries + clicked_mean, query_mask, training=training,
                                         return_sequences=True)
        split = self.interests(feed_seq, feed_mask, search_seq, query_mask)
        pooled = [attention(target_item, seq, mask, training=training)
                  for attention, seq, masks in (
                      (self.feed_attention, feed_seq,
                       (feed_mask, split["rec_similar"], split["rec_dissimilar"])),
                      (self.search_attention, search_seq,
                       (query_mask, split["src_similar"], split["src_dissimilar"])))
                  for mask in masks]
        logits = self.ctr_logits(tf.concat([*self.context_embeddings(features), target, *pooled],
                                           axis=-1), training)
        aux = {}
        if training and cfg.sesrec.triplet_weight:
            aux["triplet_loss"] = (cfg.sesrec.triplet_weight, split["loss"])
        if training and cfg.sesrec.alignment_weight:
            aux["alignment_loss"] = (cfg.sesrec.alignment_weight, self._alignment_loss(
                queries, key_idx, clicked, clicked_idx, clicked_mask))
        return {"logits": logits, "aux_losses": aux}

    def _alignment_loss(self, queries, key_idx, clicked, clicked_idx, pair_mask):
        """Symmetric InfoNCE over the (query, clicked item) pairs of the search histories."""
        n = self.config.sesrec.contrastive_negatives
        pair_queries = tf.boolean_mask(
            tf.broadcast_to(queries[:, :, None], tf.shape(clicked)), pair_mask)   # [P, d]
        pair_keys = tf.boolean_mask(
            tf.broadcast_to(key_idx[:, :, None], tf.shape(clicked_idx)), pair_mask)
        pair_items = tf.boolean_mask(clicked, pair_mask)                           # [P, d]
        pair_item_ids = tf.boolean_mask(clicked_idx, pair_mask)

        neg_items = tf.random.uniform([n], 2, self.item_rows, dtype=tf.int64)
        neg_item_vecs = self.embeddings[S.VOCAB_ITEMS](neg_items)                 # [n, d]
        # Negative queries: drawn from the batch's real queries (a zero row stands in when
        # there is none; then there is no pair either).
        real = key_idx != 0
        real_queries = tf.concat([tf.boolean_mask(queries, real),
                                  tf.zeros_like(queries[:1, 0])], 0)
        real_keys = tf.concat([tf.boolean_mask(key_idx, real), tf.zeros([1], key_idx.dtype)], 0)
        picks = tf.random.uniform([n], 0, tf.maximum(tf.shape(real_keys)[0] - 1, 1), tf.int32)
        neg_keys = tf.gather(real_keys, picks)
        neg_query_vecs = tf.gather(real_queries, picks)                            # [n, d]

        to_items = self._info_nce(pair_queries, pair_items, neg_item_vecs,
                                  neg_items[None, :] != pair_item_ids[:, None])
        to_queries = self._info_nce(pair_items, pair_queries, neg_query_vecs,
                                    (neg_keys[None, :] != pair_keys[:, None]) & (
                                        neg_keys[None, :] != 0))
        return 0.5 * (to_items + to_queries)

    def _info_nce(self, anchors, positives, negatives, negative_valid):
        """anchors, positives [P, d], negatives [n, d] shared by all rows, negative_valid bool
        [P, n] -> mean over rows of -log softmax of the positive among (positive, negatives)."""
        anchors, positives, negatives = (tf.cast(t, tf.float32)
                                         for t in (anchors, positives, negatives))
        pos = self.similarity(anchors, positives)[:, None]                        # [P, 1]
        neg = self.similarity.pairwise(anchors, negatives)                        # [P, n]
        has_pos = tf.ones_like(pos, tf.bool)
        # The positive joins its own denominator: query_item_contrastive_loss's denominator holds
        # only what it is given as negatives.
        return losses.query_item_contrastive_loss(
            pos, has_pos, tf.concat([pos, neg], 1), tf.concat([has_pos, negative_valid], 1),
            self.config.sesrec.contrastive_temperature)
