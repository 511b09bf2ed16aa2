"""DIN with the query side of QueryRec (docs/PAPER.md); config flags give the paper's ablations.

| registry name | query_pooling | query_encoder | nip_weight | contrastive_weight |
|---|---|---|---|---|
| din       | -   | -   | 0  | 0  |
| din_query | yes | -   | 0  | 0  |  eq 2 pooling of the query list, no auxiliary loss
| din_nip   | -   | yes | l2 | 0  |  SASRec encoding of the query list + NIP loss (eqs 13-14)
| din_con   | yes | -   | 0  | l3 |  + query-item contrastive loss (eq 15), log positives
| queryrec  | yes | yes | l2 | l3 |  eq 16; diffusion positives when available

CTR input (eq 3): [e_u || e_i || e_xu || e_xi || v_b || (v_q) || (e_qt)] -> MLP -> logit (eq 4).
An item is represented by [item || first-level category || second-level category] embeddings.
"""

from __future__ import annotations

import logging
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import losses
from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.layers.age_embedding import AgeEmbedding, ages_in_hours
from qrec_tf.layers.contrastive import BilinearSimilarity
from qrec_tf.layers.id_lookup import OOV_INDEX
from qrec_tf.layers.layer_scale import LayerScale
from qrec_tf.layers.query_embedding import SparseQueryEmbedding
from qrec_tf.layers.sas_encoder import SASEncoder
from qrec_tf.layers.search_match import SearchMatch
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.positives import positives_matrix

LOG = logging.getLogger(__name__)

def _vocabulary_indices(raw: np.ndarray, values: list) -> np.ndarray:
    """Raw ids -> vocabulary indices as the model's lookups give them (0 for PAD_ID, 1 for an
    id outside `values`, 2 + its position otherwise)."""
    position = {int(v): i + 2 for i, v in enumerate(values)}
    return np.array([0 if r == S.PAD_ID else position.get(int(r), OOV_INDEX) for r in raw],
                    np.int64)


class QueryRecModel(CTRModel):
    """DIN backbone + query list pooling / SAS encoder + NIP and contrastive losses."""

    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 query_positives: np.ndarray | None = None,
                 item_categories: np.ndarray | None = None, **kwargs):
        """`query_positives`: int [query vocabulary rows, P] item *indices* (0 = none) of the
        positives of each query index (the contrastive loss's I+_q); needed when
        config.contrastive_weight > 0. `item_categories`: int [item vocabulary rows, 3] raw
        (category, sub-category, author) ids of each item row (`data.item_categories`); needed
        when config.query_item_context or config.search_match."""
        super().__init__(config, schema, vocabularies, **kwargs)
        d = config.embedding_dim
        self.uses_queries = config.query_pooling or config.query_encoder or bool(
            config.contrastive_weight)
        self.history_attention = self.din_attention("history_attention")
        if self.uses_queries:
            self.query_embedding = SparseQueryEmbedding(
                vocabularies.size(S.VOCAB_QUERIES), vocabularies.size(S.VOCAB_WORDS), d,
                name="query_embedding")
        if config.query_pooling:
            self.query_attention = self.din_attention("query_attention")
            self.query_target_projection = None
            if config.query_attention_target == "item":
                self.query_target_projection = keras.layers.Dense(
                    d, use_bias=False, name="query_target_projection")
                self.query_target_projection.build((None, 3 * d))
            self.query_positions = None
            if config.query_attention_positions:
                self.query_positions = self.add_weight(
                    shape=(schema.max_queries, d), initializer="zeros", name="query_positions")
        self.reads_clicked_categories = config.query_item_context or config.search_match
        if self.reads_clicked_categories:
            if item_categories is None:
                raise ValueError("model.query_item_context and model.search_match need the item "
                                 "categories table")
            # As vocabulary indices (0 padding, 1 OOV): the table is read inside
            # `indexed_inputs()` too, where `lookup` passes its input through.
            self.item_category_indices = tf.constant(np.stack([
                _vocabulary_indices(item_categories[:, column], vocabularies.values[vocab])
                for column, vocab in enumerate(
                    (S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES, S.VOCAB_AUTHORS))], 1), tf.int64)
        # Ages of the queries (the impression's time minus each session's) inside the graph.
        self.reads_query_times = config.query_age_embedding or config.search_match
        self.query_age = None
        if config.query_age_embedding:
            self.query_age = AgeEmbedding(d, name="query_age")
            self.query_age.build((None, schema.max_queries))
        self.search_match = None
        if config.search_match:
            self.search_match = SearchMatch(name="search_match")
            # Zero at the start: the model begins as if it had no match input.
            self.search_match_logit = keras.layers.Dense(
                1, use_bias=False, kernel_initializer="zeros", name="search_match_logit")
        if config.query_encoder:
            self.query_encoder = SASEncoder(schema.max_queries, d, num_blocks=config.sas_blocks,
                                            num_heads=config.sas_heads, dropout=config.sas_dropout,
                                            bucketed=config.sas_bucketed,
                                            name="query_encoder")
        if config.contrastive_weight:
            if query_positives is None:
                raise ValueError("contrastive_weight > 0 needs the query positives table")
            self.similarity = BilinearSimilarity(d, name="query_item_similarity")
            # Only training calls it: build now, so that every variable exists before the
            # optimizer is built (a distribution strategy builds it before the first step).
            self.similarity.build((None, d))
            self.query_positives = tf.constant(query_positives, tf.int64)
            self.item_rows = vocabularies.values_end(S.VOCAB_ITEMS)  # negatives: values only
        # The query side's CTR inputs (v_q, e_qt) may be dropped out and scaled (LayerScale)
        # before they join the MLP: docs/ARCHITECTURE.md, "The query branch".
        self.query_input_dropout = (keras.layers.Dropout(config.query_dropout,
                                                         name="query_input_dropout")
                                    if config.query_dropout else None)
        self.query_scales = {}
        if config.query_scale_init is not None:
            for name, used in (("pooled", config.query_pooling),
                               ("encoded", config.query_encoder)):
                if used:
                    self.query_scales[name] = LayerScale(config.query_scale_init,
                                                         name=f"query_{name}_scale")
                    self.query_scales[name].build((None, d))
        if config.query_fusion == "bilinear":
            # [v_q || e_qt] [rows, k * d] against the target [rows, 3d]; W = 0 at the start, so
            # the model starts as its DIN backbone (docs/ARCHITECTURE.md, "The query branch").
            query_dim = d * (int(config.query_pooling) + int(config.query_encoder))
            self.query_target_score = BilinearSimilarity(
                query_dim, "zeros", b_dim=3 * d, squash=False, name="query_target_score")
            self.query_target_score.build((None, query_dim))
        self.make_ctr_head()

    @classmethod
    def data_constants(cls, config, data, vocabularies):
        """{"query_positives": the contrastive loss's table (`positives_matrix`)} when the
        config has a contrastive loss, {"item_categories": ...} with query_item_context or
        search_match; both from `data` (a loaded `qrec_tf.data_dir.DataDirectory`)."""
        constants = {}
        if config.query_item_context or config.search_match:
            constants["item_categories"] = data.item_categories(
                vocabularies.values[S.VOCAB_ITEMS])
        if not config.contrastive_weight:
            return constants
        table, source = data.positives(config.positives, config.positives_dir)
        query_positives = positives_matrix(
            table, vocabularies.values[S.VOCAB_QUERIES], vocabularies.values[S.VOCAB_ITEMS],
            config.contrastive_positives)
        with_positives = int((query_positives[2:, 0] != 0).sum())
        LOG.info("contrastive positives from the %s table: %d of %d queries have some", source,
                 with_positives, len(query_positives) - 2)
        return {**constants, "query_positives": query_positives}

    def aux_loss_names(self):
        return (*(["nip_loss"] if self.config.nip_weight else []),
                *(["contrastive_loss"] if self.config.contrastive_weight else []))

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        user = self.encode_user(features, training=training)
        out = self.forward_items(user, features, training=training)
        aux, cfg = {}, self.config
        if cfg.nip_weight and training:
            aux["nip_loss"] = (cfg.nip_weight, self._nip_loss(features, user["e_qt"]))
        if cfg.contrastive_weight and training:
            aux["contrastive_loss"] = (cfg.contrastive_weight, self._contrastive_loss(
                user["query_idx"], user["query_text"][:, -1]))
        return {**out, "aux_losses": aux}

    def encode_user(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        """Everything that does not depend on the target item, for each row of `features`.

        Returns {"user": user-feature embeddings [rows, dim] each, "history_idx" [rows, H],
        "history" [rows, H, 3 * dim], and with queries "query_idx" [rows, Q], "queries"
        [rows, Q, dim], with the encoder "e_qt" [rows, dim], with the search-clicked items'
        attributes "clicked_idx" [rows, Q, C] and "clicked_categories" [rows, Q, C, 3]
        (category, sub-category, author indices) and the query slots' result categories
        "result_categories" [rows, Q, 2], with query times "query_ages" [rows, Q] (hours) and
        "query_present" bool [rows, Q]}.
        """
        history_idx, history = self.item_representation(
            features[S.HIST_ITEM_IDS], features[S.HIST_CATEGORY_IDS],
            features[S.HIST_SUBCATEGORY_IDS])
        user = {"user": self.user_embeddings(features), "history_idx": history_idx,
                "history": history}
        if self.reads_clicked_categories:
            clicked = self.lookup(S.QUERY_CLICKED_ITEM_IDS, features[S.QUERY_CLICKED_ITEM_IDS])
            user["clicked_idx"] = clicked
            user["clicked_categories"] = tf.gather(self.item_category_indices,
                                                   self.unbucketed(S.VOCAB_ITEMS, clicked))
            user["result_categories"] = tf.stack(
                [self.lookup(S.QUERY_CATEGORY_IDS, features[S.QUERY_CATEGORY_IDS]),
                 self.lookup(S.QUERY_SUBCATEGORY_IDS, features[S.QUERY_SUBCATEGORY_IDS])], -1)
        if self.reads_query_times:
            # A slot is a query when its key is not padding ("" -> index 0).
            user["query_present"] = self.lookup(S.QUERY_KEYS, features[S.QUERY_KEYS]) != 0
            user["query_ages"] = ages_in_hours(features[S.TIMESTAMP],
                                               features[S.QUERY_TIMESTAMPS])
        if self.uses_queries:
            query_idx = self.lookup(S.QUERY_KEYS, features[S.QUERY_KEYS])
            word_idx = self.lookup(S.QUERY_WORD_IDS, features[S.QUERY_WORD_IDS])
            user["query_idx"] = query_idx
            user["query_text"] = self.embed_queries(query_idx, word_idx, training)  # [rows, Q, d]
            user["queries"] = user["query_text"]
            if self.config.query_item_context:
                user["queries"] = (user["queries"] + self.clicked_items_context(user)
                                   + self.results_context(user))
            if self.query_age is not None:
                age = self.query_age(user["query_ages"])                           # [rows, Q, d]
                user["queries"] = user["queries"] + tf.where(
                    (query_idx != 0)[..., None], tf.cast(age, user["queries"].dtype), 0.0)
        if self.config.query_encoder:
            user["e_qt"] = self.query_encoder(user["queries"], user["query_idx"] != 0,
                                              training=training)               # [rows, d]
        return user

    def clicked_items_context(self, user: dict) -> tf.Tensor:
        """[rows, Q, dim]: per query slot, the mean representation [item || category ||
        sub-category] of the items clicked in its session, through the query attention's target
        projection (0 for a slot without clicks)."""
        clicked, categories = user["clicked_idx"], user["clicked_categories"]  # [rows, Q, C(, 2)]
        # Only the real clicks are embedded (most slots are padding): each one's representation
        # projected (a linear map without bias, so the mean of the projections is the
        # projection of the mean), then averaged per query slot.
        real = tf.where(clicked != 0)                                      # [clicks, 3]
        real_categories = tf.gather_nd(categories, real)                   # [clicks, 2]
        rep = tf.concat([self.embed(S.ITEM_ID, tf.gather_nd(clicked, real)),
                         self.embed(S.CATEGORY_ID, real_categories[:, 0]),
                         self.embed(S.SUBCATEGORY_ID, real_categories[:, 1])],
                        axis=-1)                                           # [clicks, 3d]
        shape = tf.shape(clicked, tf.int64)
        slots = shape[0] * shape[1]
        slot = real[:, 0] * shape[1] + real[:, 1]
        projected = self.query_target_projection(rep)                      # [clicks, d]
        total = tf.math.unsorted_segment_sum(projected, slot, slots)
        count = tf.math.unsorted_segment_sum(tf.ones_like(projected[:, :1]), slot, slots)
        return tf.reshape(total / tf.maximum(count, 1.0),
                          tf.concat([shape[:2], [self.config.embedding_dim]], 0))

    def results_context(self, user: dict) -> tf.Tensor:
        """[rows, Q, dim]: per query slot, where its session's results lie: [0 || category ||
        sub-category] of the results' majority categories through the query attention's target
        projection (0 for a slot without them), so that a query without a click, or whose words
        are rare, still points at the part of the catalogue it is about."""
        categories = user["result_categories"]                               # [rows, Q, 2]
        category = self.embed(S.CATEGORY_ID, categories[..., 0])
        subcategory = self.embed(S.SUBCATEGORY_ID, categories[..., 1])
        rep = tf.concat([tf.zeros_like(category), category, subcategory], axis=-1)
        projected = self.query_target_projection(rep)                        # [rows, Q, d]
        return tf.where((categories[..., 1:] != 0), projected, tf.zeros_like(projected))

    def embed_queries(self, query_idx: tf.Tensor, word_idx: tf.Tensor,
                      training: bool = False) -> tf.Tensor:
        """Query vectors [rows, Q, dim] of query indices [rows, Q] and word indices [rows, Q, W].

        In training each distinct query of the batch is embedded once and its vector shared by
        the slots that hold it. A batch repeats queries and padding many times over, and the
        optimizer's cost follows the gradient's rows: one per distinct query instead of one per
        slot (and W word rows each). The values are the same, because a query's key determines
        its words (the Beam job derives both from the query's text); OOV keys (queries unseen in
        training) are told apart by slot. Inference embeds every slot: XLA, which compiles the
        serving path, has no unique, and one user's queries repeat little.
        """
        if not training:
            return self.query_embedding(query_idx, word_idx)
        keys = tf.reshape(query_idx, [-1])
        slots = tf.range(tf.size(keys, out_type=keys.dtype), dtype=keys.dtype)
        unseen = self.unbucketed(S.VOCAB_QUERIES, keys) == OOV_INDEX
        distinct, slot_to_distinct = tf.unique(tf.where(unseen, -1 - slots, keys))
        first_slot = tf.math.unsorted_segment_min(slots, slot_to_distinct, tf.size(distinct))
        words = tf.gather(tf.reshape(word_idx, [tf.size(keys), -1]), first_slot)
        vectors = self.query_embedding(tf.gather(keys, first_slot), words)   # [distinct, dim]
        return tf.reshape(tf.gather(vectors, slot_to_distinct),
                          tf.concat([tf.shape(query_idx), [self.config.embedding_dim]], 0))

    def forward_items(self, user: dict, features: Mapping[str, tf.Tensor],
                      training: bool = False, items_per_user: tf.Tensor | None = None) -> dict:
        """Click logits [rows] of the target items in `features` (item features [rows]) for the
        users of `encode_user`: row r belongs to user r, or to user r // items_per_user when each
        user has `items_per_user` consecutive items (one user's candidates)."""
        # Sequences stay one per user (the attention shares them); vectors are repeated.
        per_row = [*user["user"], *([user["e_qt"]] if self.config.query_encoder else [])]
        if items_per_user is not None:
            per_row = [tf.repeat(t, items_per_user, axis=0) for t in per_row]
        item_idx, target = self.item_representation(
            features[S.ITEM_ID], features[S.CATEGORY_ID], features[S.SUBCATEGORY_ID])
        v_b = self.history_attention(target, user["history"], user["history_idx"] != 0,
                                     training=training, queries_per_key_row=items_per_user)
        parts = [*per_row[:len(user["user"])], *self.item_embeddings(features), target, v_b]
        match_logit = 0.0
        if self.search_match is not None:
            match_logit = tf.cast(tf.squeeze(self.search_match_logit(
                self.search_match_features(user, features, item_idx)), -1), tf.float32)
        query_parts = []
        if self.config.query_pooling:
            query_parts.append(self.query_input("pooled", self.pool_queries(
                user, item_idx, target, training, items_per_user), training))
        if self.config.query_encoder:
            e_qt = per_row[len(user["user"])]
            if not self.config.query_encoder_ctr_gradient:
                e_qt = tf.stop_gradient(e_qt)
            if self.config.query_encoder_input == "target_product":
                # e_qt * e_i: what NIP scores (<e_qt, e_j> = its sum), per target item.
                e_qt = e_qt * self.embed(S.ITEM_ID, item_idx)
            query_parts.append(self.query_input("encoded", e_qt, training))
        if self.config.query_fusion == "bilinear":
            hidden = self.ctr_mlp(tf.concat(parts, axis=-1), training=training)
            query_score = self.query_target_score(tf.concat(query_parts, axis=-1), target)
            return {"logits": tf.squeeze(self.ctr_logit(hidden), -1)
                    + tf.cast(query_score, tf.float32) + match_logit}
        return {"logits": self.ctr_logits(tf.concat(parts + query_parts, axis=-1), training)
                + match_logit}

    def pool_queries(self, user: dict, item_idx: tf.Tensor, target: tf.Tensor,
                     training: bool = False, items_per_user: tf.Tensor | None = None
                     ) -> tf.Tensor:
        """v_q [rows, dim] (eq 2): the user's queries [users, Q, dim] weighted by their
        attention to the target (its item-id embedding, or its whole representation [rows, 3d]
        projected, model.query_attention_target), plus position vectors when configured."""
        query_target = (self.query_target_projection(target)
                        if self.query_target_projection is not None
                        else self.embed(S.ITEM_ID, item_idx))
        queries = user["queries"]
        if self.query_positions is not None:
            queries = queries + tf.cast(self.query_positions, queries.dtype)
        return self.query_attention(query_target, queries, user["query_idx"] != 0,
                                    training=training, queries_per_key_row=items_per_user)

    def search_match_features(self, user: dict, features: Mapping[str, tf.Tensor],
                              item_idx: tf.Tensor) -> tf.Tensor:
        """[rows, 40] (layers.search_match, model.search_match): time-decayed counts of the
        user's search events that share an attribute with the target, at 5 half-lives each:
        - the items clicked in search sessions (item, author, category, sub-category);
        - the results of the sessions with a click (category, sub-category);
        - the results of the sessions without one (category, sub-category): a search that found
          nothing to click may leave a need the feed can meet, and one that did may not."""
        category = self.lookup(S.CATEGORY_ID, features[S.CATEGORY_ID])
        subcategory = self.lookup(S.SUBCATEGORY_ID, features[S.SUBCATEGORY_ID])
        author = self.lookup(S.AUTHOR_ID, features[S.AUTHOR_ID])
        clicked, attributes = user["clicked_idx"], user["clicked_categories"]  # [U, Q, C(, 3)]
        is_clicked = (clicked != 0)[..., None]                                  # [U, Q, C, 1]
        from_clicks = tf.where(is_clicked, tf.stack(
            [clicked, attributes[..., 2], attributes[..., 0], attributes[..., 1]], -1),
            tf.zeros_like(clicked)[..., None])                                 # [U, Q, C, 4]
        # A session's results as four more levels (category and sub-category of the sessions
        # with a click, then of those without), in its first click slot; the kind it is not,
        # and absent sessions, are padding (index 0 never matches). All of it is one call of
        # eight levels: the columns of one call per part concatenated, in fewer ops.
        had_click = tf.reduce_any(is_clicked, axis=2)                          # [U, Q, 1]
        results = tf.where(user["query_present"][..., None], user["result_categories"],
                           tf.zeros_like(user["result_categories"]))           # [U, Q, 2]
        zeros = tf.zeros_like(results)
        by_kind = tf.concat([tf.where(had_click, results, zeros),
                             tf.where(had_click, zeros, results)], -1)         # [U, Q, 4]
        slots = tf.shape(clicked)[2]
        from_results = tf.concat(
            [by_kind[:, :, None],
             tf.zeros(tf.concat([tf.shape(by_kind)[:2], [slots - 1, 4]], 0), by_kind.dtype)],
            2)                                                                 # [U, Q, C, 4]
        target = tf.stack([item_idx, author, category, subcategory,
                           category, subcategory, category, subcategory], -1)
        return self.search_match(target, tf.concat([from_clicks, from_results], -1),
                                 user["query_ages"])

    def query_input(self, name: str, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """A query-side CTR input [rows, dim] ("pooled" v_q or "encoded" e_qt) as the MLP reads
        it: after the query dropout and the branch's LayerScale, when the config has them."""
        if self.query_input_dropout is not None:
            x = self.query_input_dropout(x, training=training)
        return self.query_scales[name](x) if name in self.query_scales else x

    def score_candidate_features(self, context: Mapping[str, tf.Tensor],
                                 candidates: Mapping[str, tf.Tensor]) -> tf.Tensor:
        # The user side (lookups, embeddings, the query encoder) once per user, not per item.
        shape = tf.shape(candidates[S.ITEM_ID])
        user = self.encode_user(context, training=False)
        items = {name: tf.reshape(values, [-1]) for name, values in candidates.items()}
        logits = self.forward_items(user, items, training=False, items_per_user=shape[1])
        return tf.reshape(tf.sigmoid(tf.cast(logits["logits"], tf.float32)), shape)

    def _nip_loss(self, features, e_qt):
        pos = self.lookup(S.NIP_POS_ITEM_IDS, features[S.NIP_POS_ITEM_IDS])
        neg = self.lookup(S.NIP_NEG_ITEM_IDS, features[S.NIP_NEG_ITEM_IDS])
        pos_vecs, neg_vecs = self.embed(S.ITEM_ID, pos), self.embed(S.ITEM_ID, neg)
        if not self.config.nip_trains_items:
            pos_vecs, neg_vecs = tf.stop_gradient(pos_vecs), tf.stop_gradient(neg_vecs)
        return losses.next_item_prediction_loss(e_qt, pos_vecs, pos != 0, neg_vecs, neg != 0)

    def _contrastive_loss(self, key_idx, last_query):
        """Eq 15 for q^t = the user's last query: its positives vs items sampled uniformly once
        per batch and shared by every example (as sampled softmax does): the negatives' cost,
        embedding rows and their gradient, is then that of `contrastive_negatives` items, not of
        that many per example."""
        positives = tf.gather(self.query_positives,
                              self.unbucketed(S.VOCAB_QUERIES, key_idx[:, -1]))  # [B, P]
        negatives = tf.random.uniform([self.config.contrastive_negatives], 2, self.item_rows,
                                      dtype=tf.int64)                          # [N]
        # A sampled item that is one of an example's positives is not a negative for it.
        collides = tf.reduce_any(negatives[None, :, None] == positives[:, None, :], axis=-1)
        items = self.embeddings[S.VOCAB_ITEMS]
        pos_scores = self.similarity(last_query, items(positives))           # [B, P]
        neg_scores = self.similarity.pairwise(last_query, items(negatives))  # [B, N]
        return losses.query_item_contrastive_loss(
            pos_scores, positives != 0, neg_scores, ~collides, self.config.contrastive_temperature)
