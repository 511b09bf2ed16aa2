"""IV4Rec+ (Si et al., "Enhancing Recommendation with Search Data in a Causal Learning Manner",
TOIS 2023), the (UI) variant on DIN, baseline of table 4.

Search queries are instrumental variables (IVs) that split embeddings (the treatments) into a
causal part (the fit of a first-stage regression of the treatment on its IVs) and a non-causal
part (the residual), recombined by a learned gate (`InstrumentalDecomposition`):
- item: the treatment is the target item's representation [item || category || subcategory];
  its IVs are the queries the search log associates with the item, embedded by our learned
  `QueryEmbedding` (the paper: BERT vectors of the query texts; on KuaiSAR, whose queries are
  anonymised word ids, learned embeddings are what can be had) and averaged.
- user: the treatment is the DIN-pooled feed history v_b (eq 1); its IV is the user's query list
  before t pooled by target attention with the target item as the (gradient-stopped) query, as in
  the reference code.
[e_u || e_xu || author || item output || user output] -> MLP -> logit;
L = L_ctr + item_weight * L_stage1(item) + user_weight * L_stage1(user) (model.iv4rec).

The item's queries are a property of the item, not of the impression, so they are an in-model
constant table (like the contrastive positives) built from the query -> items table of the Beam
job: up to `iv4rec.item_queries` queries per item, first those after which it was clicked (most
clicks first), then those after which it was shown without a click (most sessions first); ties
by query key. A served model therefore needs nothing beyond the shared serving inputs, and an item
the search log never showed keeps its plain embedding (its gate is 0).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Mapping

import numpy as np
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig, check_ranges
from qrec_tf.layers.dense_stack import masked_mean
from qrec_tf.layers.id_lookup import OOV_INDEX
from qrec_tf.layers.instrumental import InstrumentalDecomposition
from qrec_tf.layers.query_embedding import SparseQueryEmbedding
from qrec_tf.models.base import CTRModel, Vocabularies

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class IV4RecConfig:
    """model.iv4rec: queries per item (the item's instrumental variables), the first-stage
    regression MLP's hidden units, and the weights of the user and item first-stage losses."""

    item_queries: int = 5
    units: list[int] = dataclasses.field(default_factory=lambda: [64])
    user_weight: float = 0.9
    item_weight: float = 0.9

    def validate(self, model: ModelConfig) -> None:
        check_ranges(self, "iv4rec", ("item_queries",), ("user_weight", "item_weight"))


def instrument_tables(rows, vocabularies: Vocabularies, queries_per_item: int,
                      max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(item_queries int32 [item rows, queries_per_item]: query indices, 0 = none;
    query_words int32 [query rows, max_words]: word indices, 0 = padding, 1 = OOV), aligned with
    the model's lookups (0 pad, 1 OOV, then vocabulary order).

    `rows`: the query -> items table (`data.query_items`). Queries outside the query vocabulary
    and items outside the item vocabulary are skipped.
    """
    query_index = {key: i + 2 for i, key in enumerate(vocabularies.values[S.VOCAB_QUERIES])}
    item_index = {item: i + 2 for i, item in enumerate(vocabularies.values[S.VOCAB_ITEMS])}
    word_index = {word: i + 2 for i, word in enumerate(vocabularies.values[S.VOCAB_WORDS])}
    query_words = np.zeros((len(query_index) + 2, max_words), np.int32)
    candidates = collections.defaultdict(list)   # item index -> [(rank key, query index)]
    for row in rows:
        query = query_index.get(row[S.QI_QUERY_KEY])
        if query is None:
            continue
        words = [word_index.get(w, OOV_INDEX) for w in row[S.QI_WORD_IDS][:max_words]]
        query_words[query, :len(words)] = words
        sessions, key = row[S.QI_SESSIONS], row[S.QI_QUERY_KEY]
        for item, clicks in zip(row[S.QI_CLICKED_ITEM_IDS], row[S.QI_CLICK_COUNTS]):
            if item in item_index:
                candidates[item_index[item]].append(((0, -clicks, -sessions, key), query))
        for item in row[S.QI_UNCLICKED_ITEM_IDS]:
            if item in item_index:
                candidates[item_index[item]].append(((1, 0, -sessions, key), query))
    item_queries = np.zeros((len(item_index) + 2, queries_per_item), np.int32)
    for item, ranked in candidates.items():
        chosen = [query for _, query in sorted(ranked)[:queries_per_item]]
        item_queries[item, :len(chosen)] = chosen
    return item_queries, query_words


class IV4RecModel(CTRModel):
    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 item_queries: np.ndarray, query_words: np.ndarray, **kwargs):
        """`item_queries`, `query_words`: `instrument_tables`' output."""
        super().__init__(config, schema, vocabularies, **kwargs)
        d = config.embedding_dim
        self.item_queries = tf.constant(item_queries, tf.int32)
        self.query_words = tf.constant(query_words, tf.int32)
        self.history_attention = self.din_attention("history_attention")
        self.query_embedding = SparseQueryEmbedding(
            vocabularies.size(S.VOCAB_QUERIES), vocabularies.size(S.VOCAB_WORDS), d,
            name="query_embedding")
        self.query_attention = self.din_attention("query_attention")
        # Treatments are item representations [item || category || subcategory]: 3 * d wide.
        self.item_decomposition = InstrumentalDecomposition(3 * d, config.iv4rec.units,
                                                            name="item_decomposition")
        self.user_decomposition = InstrumentalDecomposition(3 * d, config.iv4rec.units,
                                                            name="user_decomposition")
        self.make_ctr_head()

    @classmethod
    def data_constants(cls, config, data, vocabularies):
        item_queries, query_words = instrument_tables(
            data.query_items(), vocabularies, config.iv4rec.item_queries,
            data.schema.max_query_words)
        with_queries = int((item_queries[2:, 0] != 0).sum())
        LOG.info("iv4rec: %d of %d items have queries as instruments", with_queries,
                 len(item_queries) - 2)
        return {"item_queries": item_queries, "query_words": query_words}

    def aux_loss_names(self):
        return (*(["iv_item_loss"] if self.config.iv4rec.item_weight else []),
                *(["iv_user_loss"] if self.config.iv4rec.user_weight else []))

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        cfg = self.config
        item_idx, target, hist_idx, history = self.target_and_history(features)
        v_b = self.history_attention(target, history, hist_idx != 0, training=training)

        # The item's instruments: the mean embedding of its queries from the table.
        iv_keys = tf.gather(self.item_queries,
                            self.unbucketed(S.VOCAB_ITEMS, item_idx))           # [B, K]
        iv_queries = self.query_embedding(iv_keys, tf.gather(self.query_words, iv_keys))
        item_iv = masked_mean(iv_queries, iv_keys != 0, 1)                      # [B, d]
        item = self.item_decomposition(target, item_iv, tf.reduce_any(iv_keys != 0, -1))

        # The user's instruments: the query list pooled by target attention.
        key_idx = self.lookup(S.QUERY_KEYS, features[S.QUERY_KEYS])
        queries = self.query_embedding(key_idx, self.lookup(S.QUERY_WORD_IDS,
                                                            features[S.QUERY_WORD_IDS]))
        query_mask = key_idx != 0
        user_iv = self.query_attention(tf.stop_gradient(self.embed(S.ITEM_ID, item_idx)),
                                       queries, query_mask, training=training)
        user = self.user_decomposition(v_b, user_iv, tf.reduce_any(query_mask, -1))

        logits = self.ctr_logits(tf.concat([*self.context_embeddings(features), item["output"],
                                            user["output"]], axis=-1), training)
        aux = {}
        if training and cfg.iv4rec.item_weight:
            aux["iv_item_loss"] = (cfg.iv4rec.item_weight, item["first_stage_loss"])
        if training and cfg.iv4rec.user_weight:
            aux["iv_user_loss"] = (cfg.iv4rec.user_weight, user["first_stage_loss"])
        return {"logits": logits, "aux_losses": aux}
