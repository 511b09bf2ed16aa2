"""DIN (docs/PAPER.md eqs 1-5), the backbone of QueryRec, and the query side that QueryRec adds
to it: the query list pooled by target attention (eq 2), the SASRec encoding e_qt (eq 3), the
auxiliary tasks (models/tasks.py: NIP, eqs 13-14; the contrastive loss, eq 15) and the query
signals in time (docs/ARCHITECTURE.md, "The query branch"). Which parts a model has is fixed by
its name (models/registry.py: din, din_query, din_nip, din_con, din_con_diffusion, queryrec);
their hyper-parameters are the section `model.din` (`DINConfig`).

CTR input (eq 3): [e_u || e_xu || author || target item || v_b || (v_q) || (e_qt)] -> MLP ->
logit (eq 4). An item is represented by [item || first-level category || second-level category]
embeddings.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.layers.age_embedding import AgeEmbedding, ages_in_hours
from qrec_tf.layers.contrastive import BilinearSimilarity
from qrec_tf.layers.id_lookup import OOV_INDEX
from qrec_tf.layers.layer_scale import LayerScale
from qrec_tf.layers.query_embedding import SparseQueryEmbedding
from qrec_tf.layers.sas_encoder import SASEncoder
from qrec_tf.layers.search_match import SearchMatch
from qrec_tf.models import query_side
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.tasks import NextItemPrediction, QueryItemContrast
from qrec_tf.positives import positives_matrix

LOG = logging.getLogger(__name__)

SAS_KEYS = {"sas_blocks", "sas_heads", "sas_dropout"}
NIP_KEYS = {"nip_weight", "nip_trains_items", "query_encoder_ctr_gradient"}
CONTRASTIVE_KEYS = {"contrastive_weight", "contrastive_temperature", "contrastive_positives",
                    "contrastive_negatives", "positives", "positives_dir"}


@dataclasses.dataclass
class DINConfig:
    """model.din: the query side's parts and hyper-parameters (docs/CONFIG.md). The name fixes
    query_pooling, query_encoder and which auxiliary losses exist (models/registry.py); a key
    of a part the model does not have is an error (`keys_read`)."""

    query_pooling: bool = False          # v_q, eq 2
    query_encoder: bool = False          # e_qt, the SASRec encoder of the query list
    sas_blocks: int = 2
    sas_heads: int = 1
    sas_dropout: float = 0.2
    nip_weight: float = 0.0              # lambda2 (eqs 13-14)
    # False: NIP trains the query side only (its item embeddings through a stop_gradient):
    # docs/ARCHITECTURE.md, "NIP gradient scope".
    nip_trains_items: bool = True
    # False: e_qt reaches the click logit through a stop_gradient, so NIP alone shapes it:
    # docs/ARCHITECTURE.md, "The query branch".
    query_encoder_ctr_gradient: bool = True
    contrastive_weight: float = 0.0      # lambda3 (eq 15)
    contrastive_temperature: float = 0.2  # beta
    contrastive_positives: int = 5       # positives of the last query per example
    contrastive_negatives: int = 64      # items sampled per batch, shared by its examples
    # "log": the query_items/ table of the Beam job; "diffusion": the augment stage's table;
    # "auto": diffusion when <data>/positives/ exists, else log.
    positives: str = "log"
    # Where the augment stage's table is (its --output dir or that dir's positives/);
    # None: <data>/positives.
    positives_dir: str | None = None
    # What the query attention compares each query with: "item_id" (the target's item-id
    # embedding) or "item" (its whole representation, projected to embedding_dim).
    query_attention_target: str = "item_id"
    # Each query's vector also holds its session's clicked items and its results' categories,
    # through the target's projection (needs query_attention_target: item).
    query_item_context: bool = False
    # A learned vector per age bucket of each query added to the query vectors.
    query_age_embedding: bool = False
    # The click logit adds a zero-initialised linear term of time-decayed search matches.
    search_match: bool = False
    # v_q and e_qt join the MLP through a LayerScale starting at this value (None: none).
    query_scale_init: float | None = None

    @staticmethod
    def keys_read(implied: Mapping) -> set[str]:
        """The keys that a model with these name-implied values reads."""
        pooling, encoder = implied["query_pooling"], implied["query_encoder"]
        keys = {"search_match"}
        if pooling:
            keys |= {"query_attention_target", "query_item_context"}
        if pooling or encoder:
            keys |= {"query_age_embedding", "query_scale_init"}
        if encoder:
            keys |= SAS_KEYS | NIP_KEYS
        if implied.get("contrastive_weight") != 0.0:
            keys |= CONTRASTIVE_KEYS
        return keys

    def validate(self, model: ModelConfig) -> None:
        if self.positives not in ("log", "diffusion", "auto"):
            raise ValueError("model.din.positives must be log, diffusion or auto")
        if self.positives_dir is not None and (not self.positives_dir
                                               or self.positives == "log"):
            raise ValueError("model.din.positives_dir must be a non-empty path and is read only "
                             "with model.din.positives diffusion or auto")
        if self.contrastive_weight and self.contrastive_temperature <= 0:
            raise ValueError("model.din.contrastive_temperature must be > 0")
        if self.query_attention_target not in ("item_id", "item"):
            raise ValueError("model.din.query_attention_target must be item_id or item")
        if self.query_item_context and self.query_attention_target != "item":
            raise ValueError("model.din.query_item_context needs model.din.query_attention_"
                             "target: item (the clicked items and the target share one "
                             "projection)")
        if self.nip_weight and not self.query_encoder:
            raise ValueError("model.din.nip_weight > 0 needs the query encoder (NIP trains it)")
        if self.query_encoder and not self.query_encoder_ctr_gradient and not self.nip_weight:
            raise ValueError("model.din.query_encoder_ctr_gradient false needs model.din."
                             "nip_weight > 0: nothing else would train the query encoder")
        if self.sas_heads < 1 or self.sas_blocks < 1:
            raise ValueError("model.din.sas_heads and model.din.sas_blocks must be >= 1")
        if self.query_encoder and model.embedding_dim % self.sas_heads:
            raise ValueError("model.embedding_dim must be divisible by model.din.sas_heads")


def _vocabulary_indices(raw: np.ndarray, values: list) -> np.ndarray:
    """Raw ids -> vocabulary indices as the model's lookups give them (0 for PAD_ID, 1 for an
    id outside `values`, 2 + its position otherwise)."""
    position = {int(v): i + 2 for i, v in enumerate(values)}
    return np.array([0 if r == S.PAD_ID else position.get(int(r), OOV_INDEX) for r in raw],
                    np.int64)


class DINModel(CTRModel):
    """DIN, with the query side's parts that its name gives it (`model.din`)."""

    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 query_positives: np.ndarray | None = None,
                 item_categories: np.ndarray | None = None, **kwargs):
        """`query_positives`: int [query vocabulary rows, P] item *indices* (0 = none) of the
        positives of each query index (the contrastive loss's I+_q); needed with a contrastive
        loss. `item_categories`: int [item vocabulary rows, 3] raw (category, sub-category,
        author) ids of each item row (`DataDirectory.item_categories`); needed with
        query_item_context or search_match. The layers are created in a fixed order (it fixes
        the initial weights)."""
        super().__init__(config, schema, vocabularies, **kwargs)
        d, din = config.embedding_dim, config.din
        self.uses_queries = din.query_pooling or din.query_encoder or bool(din.contrastive_weight)
        self.history_attention = self.din_attention("history_attention")
        if self.uses_queries:
            self.query_embedding = SparseQueryEmbedding(
                vocabularies.size(S.VOCAB_QUERIES), vocabularies.size(S.VOCAB_WORDS), d,
                name="query_embedding")
        if din.query_pooling:
            self.query_attention = self.din_attention("query_attention")
            self.query_target_projection = None
            if din.query_attention_target == "item":
                self.query_target_projection = keras.layers.Dense(
                    d, use_bias=False, name="query_target_projection")
                self.query_target_projection.build((None, 3 * d))
        self.reads_clicked_categories = din.query_item_context or din.search_match
        if self.reads_clicked_categories:
            if item_categories is None:
                raise ValueError("model.din.query_item_context and model.din.search_match need "
                                 "the item categories table")
            # As vocabulary indices (0 padding, 1 OOV): the table is read inside
            # `indexed_inputs()` too, where `lookup` passes its input through.
            self.item_category_indices = tf.constant(np.stack([
                _vocabulary_indices(item_categories[:, column], vocabularies.values[vocab])
                for column, vocab in enumerate(
                    (S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES, S.VOCAB_AUTHORS))], 1), tf.int64)
        # Ages of the queries (the impression's time minus each session's) inside the graph.
        self.reads_query_times = din.query_age_embedding or din.search_match
        self.query_age = None
        if din.query_age_embedding:
            self.query_age = AgeEmbedding(d, name="query_age")
            self.query_age.build((None, schema.max_queries))
        self.search_match = None
        if din.search_match:
            self.search_match = SearchMatch(name="search_match")
            # Zero at the start: the model begins as if it had no match input.
            self.search_match_logit = keras.layers.Dense(
                1, use_bias=False, kernel_initializer="zeros", name="search_match_logit")
        if din.query_encoder:
            self.query_encoder = SASEncoder(schema.max_queries, d, num_blocks=din.sas_blocks,
                                            num_heads=din.sas_heads, dropout=din.sas_dropout,
                                            name="query_encoder")
        self.tasks = []
        if din.nip_weight:
            self.tasks.append(NextItemPrediction(din.nip_weight, din.nip_trains_items))
        if din.contrastive_weight:
            if query_positives is None:
                raise ValueError("model.din.contrastive_weight > 0 needs the query positives "
                                 "table")
            self.similarity = BilinearSimilarity(d, name="query_item_similarity")
            # Only training calls it: build now, so that every variable exists before the
            # optimizer is built (a distribution strategy builds it before the first step).
            self.similarity.build((None, d))
            self.tasks.append(QueryItemContrast(
                din.contrastive_weight, self.similarity, tf.constant(query_positives, tf.int64),
                vocabularies.values_end(S.VOCAB_ITEMS),   # negatives: values only
                din.contrastive_negatives, din.contrastive_temperature))
        # v_q and e_qt may join the MLP through a learned scale (LayerScale):
        # docs/ARCHITECTURE.md, "The query branch".
        self.query_scales = {}
        if din.query_scale_init is not None:
            for name, used in (("pooled", din.query_pooling), ("encoded", din.query_encoder)):
                if used:
                    self.query_scales[name] = LayerScale(din.query_scale_init,
                                                         name=f"query_{name}_scale")
                    self.query_scales[name].build((None, d))
        self.make_ctr_head()

    @classmethod
    def data_constants(cls, config, data, vocabularies):
        """{"query_positives": the contrastive loss's table (`positives_matrix`)} when the
        config has a contrastive loss, {"item_categories": ...} with query_item_context or
        search_match; both from `data` (a loaded `qrec_tf.data_dir.DataDirectory`)."""
        din, constants = config.din, {}
        if din.query_item_context or din.search_match:
            constants["item_categories"] = data.item_categories(
                vocabularies.values[S.VOCAB_ITEMS])
        if not din.contrastive_weight:
            return constants
        table, source = data.positives(din.positives, din.positives_dir)
        query_positives = positives_matrix(
            table, vocabularies.values[S.VOCAB_QUERIES], vocabularies.values[S.VOCAB_ITEMS],
            din.contrastive_positives)
        with_positives = int((query_positives[2:, 0] != 0).sum())
        LOG.info("contrastive positives from the %s table: %d of %d queries have some", source,
                 with_positives, len(query_positives) - 2)
        return {**constants, "query_positives": query_positives}

    def aux_loss_names(self):
        # Called by CTRModel.__init__, before the tasks exist: the same names, from the config.
        din = self.config.din
        return (*([NextItemPrediction.name] if din.nip_weight else []),
                *([QueryItemContrast.name] if din.contrastive_weight else []))

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        user = self.encode_user(features, training=training)
        out = self.forward_items(user, features, training=training)
        aux = {}
        for task in self.tasks if training else ():
            aux[task.name] = self.run_task(task, features, user)
        return {**out, "aux_losses": aux}

    def run_task(self, task, features: Mapping[str, tf.Tensor], user: dict):
        """(weight, loss) of an auxiliary task on what it reads of the batch."""
        if isinstance(task, NextItemPrediction):
            pos = self.lookup(S.NIP_POS_ITEM_IDS, features[S.NIP_POS_ITEM_IDS])
            neg = self.lookup(S.NIP_NEG_ITEM_IDS, features[S.NIP_NEG_ITEM_IDS])
            return task(user["e_qt"], self.embed(S.ITEM_ID, pos), pos != 0,
                        self.embed(S.ITEM_ID, neg), neg != 0)
        return task(user["query_text"][:, -1],
                    self.unbucketed(S.VOCAB_QUERIES, user["query_idx"][:, -1]),
                    self.embeddings[S.VOCAB_ITEMS])

    def encode_user(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        """Everything that does not depend on the target item, for each row of `features`.

        Returns {"user": user-feature embeddings [rows, dim] each, "history_idx" [rows, H],
        "history" [rows, H, 3 * dim], and with queries "query_idx" [rows, Q], "query_text" and
        "queries" [rows, Q, dim] (the text vectors; the vectors the attention and the encoder
        read), with the encoder "e_qt" [rows, dim], with the search-clicked items' attributes
        "clicked_idx" [rows, Q, C] and "clicked_categories" [rows, Q, C, 3] (category,
        sub-category, author indices) and the query slots' result categories
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
            if self.config.din.query_item_context:
                user["queries"] = (user["queries"] + query_side.clicked_items_context(self, user)
                                   + query_side.results_context(self, user))
            if self.query_age is not None:
                age = self.query_age(user["query_ages"])                           # [rows, Q, d]
                user["queries"] = user["queries"] + tf.where(
                    (query_idx != 0)[..., None], tf.cast(age, user["queries"].dtype), 0.0)
        if self.config.din.query_encoder:
            user["e_qt"] = self.query_encoder(user["queries"], user["query_idx"] != 0,
                                              training=training)               # [rows, d]
        return user

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
        din = self.config.din
        # Sequences stay one per user (the attention shares them); vectors are repeated.
        per_row = [*user["user"], *([user["e_qt"]] if din.query_encoder else [])]
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
                query_side.search_match_features(self, user, features, item_idx)), -1),
                tf.float32)
        if din.query_pooling:
            parts.append(self.query_input("pooled", self.pool_queries(
                user, item_idx, target, training, items_per_user)))
        if din.query_encoder:
            e_qt = per_row[len(user["user"])]
            if not din.query_encoder_ctr_gradient:
                e_qt = tf.stop_gradient(e_qt)
            parts.append(self.query_input("encoded", e_qt))
        return {"logits": self.ctr_logits(tf.concat(parts, axis=-1), training) + match_logit}

    def pool_queries(self, user: dict, item_idx: tf.Tensor, target: tf.Tensor,
                     training: bool = False, items_per_user: tf.Tensor | None = None
                     ) -> tf.Tensor:
        """v_q [rows, dim] (eq 2): the user's queries [users, Q, dim] weighted by their
        attention to the target (its item-id embedding, or its whole representation [rows, 3d]
        projected, model.din.query_attention_target)."""
        query_target = (self.query_target_projection(target)
                        if self.query_target_projection is not None
                        else self.embed(S.ITEM_ID, item_idx))
        return self.query_attention(query_target, user["queries"], user["query_idx"] != 0,
                                    training=training, queries_per_key_row=items_per_user)

    def query_input(self, name: str, x: tf.Tensor) -> tf.Tensor:
        """A query-side CTR input [rows, dim] ("pooled" v_q or "encoded" e_qt) as the MLP reads
        it: through the branch's LayerScale when the config has one."""
        return self.query_scales[name](x) if name in self.query_scales else x

    def score_candidate_features(self, context: Mapping[str, tf.Tensor],
                                 candidates: Mapping[str, tf.Tensor]) -> tf.Tensor:
        # The user side (lookups, embeddings, the query encoder) once per user, not per item.
        shape = tf.shape(candidates[S.ITEM_ID])
        user = self.encode_user(context, training=False)
        items = {name: tf.reshape(values, [-1]) for name, values in candidates.items()}
        logits = self.forward_items(user, items, training=False, items_per_user=shape[1])
        return tf.reshape(tf.sigmoid(tf.cast(logits["logits"], tf.float32)), shape)
