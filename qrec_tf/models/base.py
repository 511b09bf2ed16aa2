"""What every CTR model here shares: raw-id lookups, embeddings, and a training step that adds
auxiliary losses to the click loss and reports each term.

Inputs are dicts of raw features named by `qrec_tf.schema` (as `qrec_tf.data` yields them); ids are
mapped to indices inside the graph by lookups built from the Beam job's vocabularies, so the same
model serves raw ids. Output of `call`: click probability, float32 [batch].
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.distribute_keras import ReplicaWorkarounds
from qrec_tf.layers.dense_stack import mlp
from qrec_tf.layers.din_attention import DINAttention
from qrec_tf.layers.embedding import SparseEmbedding, mini_batch_aware_l2
from qrec_tf.layers.id_lookup import bucketed, lookup_size, make_lookup, unbucketed, values_end
from qrec_tf.models.recording_features import RecordingFeatures

# Item features embedded by item_representation; the item group's others join the CTR input alone.
ITEM_REPRESENTATION = (S.ITEM_ID, S.CATEGORY_ID, S.SUBCATEGORY_ID)


@dataclasses.dataclass
class Vocabularies:
    """Vocabulary values per vocabulary name (qrec_tf.schema.VOCAB_*), most frequent first, and
    their counts in the training data (the Beam job's vocab/<name>.txt; optional)."""

    values: dict[str, list]
    counts: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # Hashed OOV rows after the values (model.oov_buckets, layers.id_lookup.bucketed).
    oov_buckets: int = 0

    def size(self, vocab: str) -> int:
        """Embedding rows for a vocabulary: padding + OOV + values + OOV buckets."""
        return lookup_size(self.values[vocab], self.oov_buckets)

    def values_end(self, vocab: str) -> int:
        """Rows of a table with one row per value (padding + OOV + values): where the buckets
        start."""
        return values_end(self.values[vocab])

    def inverse_frequencies(self, vocab: str) -> np.ndarray:
        """float32 [size(vocab)]: 1 / count per value's row, 0 for the padding and OOV rows."""
        if vocab not in self.counts:
            raise ValueError(f"no counts for vocabulary {vocab!r}: model.embedding_l2 needs the "
                             "Beam job's vocab/<name>.txt counts")
        counts = np.asarray(self.counts[vocab], np.float64)
        inverse = np.zeros(self.size(vocab), np.float32)   # OOV buckets: never counted
        inverse[2:2 + len(counts)] = 1.0 / np.maximum(counts, 1.0)
        return inverse


class CTRModel(ReplicaWorkarounds):
    """Base: lookups + embeddings of every categorical feature, and the custom train/test steps.

    Subclasses implement `forward(features, training) -> dict` with at least "logits" [batch], and
    may return "aux_losses": {name: (weight, scalar)} that the train step adds to the click loss.
    A model that trains on more than the feed train examples sets `trains_on_search_examples`
    (train.py then reads `data.make_multitask_dataset`), and one that needs tables derived from
    the data directory returns them as constructor arguments from `data_constants`
    (`registry.build_model` passes them; e.g. QueryRec's contrastive positives).
    """

    trains_on_search_examples: bool = False

    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.schema = schema
        self.vocabularies = vocabularies
        d = config.embedding_dim
        vocab_dtype = {f.vocab: f.dtype for f in schema.features if f.vocab}
        self.lookups = {vocab: make_lookup(vocabularies.values[vocab], vocab_dtype[vocab],
                                           name=f"lookup_{vocab}")
                        for vocab in sorted(vocab_dtype)}
        # Queries and words get their embeddings inside QueryEmbedding (models that use them).
        self.embeddings = {vocab: SparseEmbedding(vocabularies.size(vocab), d, name=f"emb_{vocab}")
                           for vocab in sorted(vocab_dtype)
                           if vocab not in (S.VOCAB_QUERIES, S.VOCAB_WORDS)}
        # DIN's mini-batch aware L2 (model.embedding_l2): 1 / count of every table's rows.
        self.inverse_frequencies = (
            {vocab: tf.constant(vocabularies.inverse_frequencies(vocab)) for vocab in vocab_dtype}
            if config.embedding_l2 else {})
        self.loss_trackers = {name: keras.metrics.Mean(name=name)
                              for name in ("loss", "ctr_loss", *self.aux_loss_names(),
                                           *(["embedding_l2"] if config.embedding_l2 else []))}
        self.auc = keras.metrics.AUC(num_thresholds=2000, name="auc")
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True,
                                                   reduction="sum_over_batch_size")
        self._inputs_are_indices = False  # only inside `indexed_inputs()`
        self._input_feature_names: tuple[str, ...] | None = None  # input_feature_names()

    @classmethod
    def data_constants(cls, config: ModelConfig, data, vocabularies: Vocabularies) -> dict:
        """Constructor keywords read from `data` (a `data_dir.DataDirectory`; none here)."""
        return {}

    # --- pieces subclasses use -----------------------------------------------------------------
    def din_attention(self, name: str) -> DINAttention:
        """DIN's target attention (eqs 1-2) as the config sets it (model.attention_*), on the
        real (target, key) pairs only (DINAttention packed: the same values as the padded
        computation, docs/ARCHITECTURE.md "Padding does no work")."""
        cfg = self.config
        return DINAttention(cfg.attention_units, cfg.attention_activation, cfg.attention_softmax,
                            name=name)

    def make_ctr_head(self, mlp_name: str = "ctr_mlp") -> None:
        """The CTR head (eq 4): `ctr_mlp` (model.mlp_*) then `ctr_logit`, a float32 Dense(1);
        `ctr_logits` applies it. Created in that order (it fixes the initial weights)."""
        cfg = self.config
        self.ctr_mlp = mlp(cfg.mlp_units, cfg.mlp_activation, cfg.dropout, mlp_name)
        self.ctr_logit = keras.layers.Dense(1, dtype="float32", name="ctr_logit")

    def ctr_logits(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The CTR head on its input [batch, in]: logits [batch]."""
        return tf.squeeze(self.ctr_logit(self.ctr_mlp(x, training=training)), -1)

    def aux_loss_names(self) -> tuple[str, ...]:
        return ()

    def lookup(self, feature: str, values: tf.Tensor) -> tf.Tensor:
        """Raw values of a schema feature -> indices (0 pad, 1 OOV); the values as they are
        inside `indexed_inputs()`."""
        if self._inputs_are_indices:
            return values
        vocab = self.schema.feature(feature).vocab
        return bucketed(self.lookups[vocab](values), values, self.vocabularies.values_end(vocab),
                        self.vocabularies.oov_buckets)

    def unbucketed(self, vocab: str, indices: tf.Tensor) -> tf.Tensor:
        """`lookup`'s indices with the OOV bucket rows as the OOV index (1): for the tables
        with one row per vocabulary value (an item's categories, a query's positives)."""
        return unbucketed(indices, self.vocabularies.values_end(vocab))

    @contextlib.contextmanager
    def indexed_inputs(self) -> Iterator[None]:
        """Within it, the model's inputs are vocabulary indices (`index_features`' output), not
        raw ids: `lookup` passes them through. For code that XLA compiles, which cannot run the
        vocabularies' hash tables: `candidate_scoring.score_candidates(compiled=True)`, a
        jit-compiled train step on indexed batches (benchmarks.vocab_scaling). It must hold
        while such a function traces; a function traced inside it keeps reading indices
        afterwards."""
        previous, self._inputs_are_indices = self._inputs_are_indices, True
        try:
            yield
        finally:
            self._inputs_are_indices = previous

    def embedding_tables(self) -> dict[str, tf.Variable]:
        """Every embedding table of the model by vocabulary name ([rows, dim] variables),
        those of a query embedding (query keys and words) included."""
        tables = {vocab: layer.embeddings for vocab, layer in self.embeddings.items()}
        query_embedding = getattr(self, "query_embedding", None)
        if query_embedding is not None:
            tables[S.VOCAB_QUERIES] = query_embedding.key_embedding.embeddings
            tables[S.VOCAB_WORDS] = query_embedding.word_embedding.embeddings
        return tables

    def input_feature_names(self) -> tuple[str, ...]:
        """The schema features this model reads, in schema order: those that `compute_loss_terms`
        looks up in training or in evaluation (the NIP targets and the `domain` of a multi-task
        model included, the label not: it comes apart). `qrec_tf.train` parses only these.

        Found once by tracing `compute_loss_terms` (both modes) on a batch of every feature
        that records which ones it reads: what a model reads follows from its code and config
        (e.g. `model.din.query_item_context`), with no list to keep in step. The trace runs no
        op (no variable changes, no random draw)."""
        if self._input_feature_names is None:
            with tf.init_scope():
                self._input_feature_names = self._trace_read_features()
        return self._input_feature_names

    def _trace_read_features(self) -> tuple[str, ...]:
        features = [f for f in self.schema.features if f.group != "label"]
        specs = self.schema.tensor_specs(features)
        label = tf.TensorSpec([None], self.schema.feature(S.LABEL).tf_dtype)
        read: set[str] = set()
        for training in (True, False):
            # No autograph: its source conversion of every model function cost ~half of a small
            # training run, and which features are read does not depend on it.
            tf.function(lambda x, y, training=training: self.compute_loss_terms(
                RecordingFeatures(x, read), y, training=training)[0]["loss"],
                autograph=False).get_concrete_function(specs, label)
        return tuple(f.name for f in features if f.name in read)

    def embedding_penalty(self, features: Mapping[str, tf.Tensor], read: set[str]) -> tf.Tensor:
        """DIN's mini-batch aware L2 (layers.embedding.mini_batch_aware_l2) summed over the
        tables, on the rows that the batch's inputs touch: the features `read` by the forward
        pass, the NIP targets not (they are not inputs). A feature the batch carries but the
        model does not read (din: query_clicked_item_ids) adds nothing."""
        total = tf.constant(0.0)
        for vocab, table in self.embedding_tables().items():
            names = self.penalised_features(vocab, read)
            if names:
                indices = tf.concat([tf.reshape(self.lookup(name, features[name]), [-1])
                                     for name in names], axis=0)
                total += mini_batch_aware_l2(table, indices, self.inverse_frequencies[vocab])
        return total

    def penalised_features(self, vocab: str, read: set[str]) -> list[str]:
        """The features whose rows of table `vocab` the mini-batch aware L2 penalises: those of
        the vocabulary among `read`, the NIP targets not (schema order)."""
        return [f.name for f in self.schema.features
                if f.vocab == vocab and f.group != "nip" and f.name in read]

    def embed(self, feature: str, indices: tf.Tensor) -> tf.Tensor:
        return self.embeddings[self.schema.feature(feature).vocab](indices)

    def item_representation(self, items: tf.Tensor, categories: tf.Tensor,
                            subcategories: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Raw item, category and subcategory ids [batch, ...] -> (item index, [..., 3 * dim])."""
        item_idx = self.lookup(S.ITEM_ID, items)
        rep = tf.concat([self.embed(S.ITEM_ID, item_idx),
                         self.embed(S.CATEGORY_ID, self.lookup(S.CATEGORY_ID, categories)),
                         self.embed(S.SUBCATEGORY_ID,
                                    self.lookup(S.SUBCATEGORY_ID, subcategories))],
                        axis=-1)
        return item_idx, rep

    def target_and_history(self, features: Mapping[str, tf.Tensor]
                           ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(target item index [batch], target representation [batch, 3 * dim], history item
        indices [batch, history], history representations [batch, history, 3 * dim])."""
        item_idx, target = self.item_representation(
            features[S.ITEM_ID], features[S.CATEGORY_ID], features[S.SUBCATEGORY_ID])
        hist_idx, history = self.item_representation(
            features[S.HIST_ITEM_IDS], features[S.HIST_CATEGORY_IDS],
            features[S.HIST_SUBCATEGORY_IDS])
        return item_idx, target, hist_idx, history

    def user_embeddings(self, features: Mapping[str, tf.Tensor]) -> list[tf.Tensor]:
        """User id and user-feature embeddings, each [batch, dim]."""
        return [self.embed(f.name, self.lookup(f.name, features[f.name]))
                for f in self.schema.group("user")]

    def item_embeddings(self, features: Mapping[str, tf.Tensor]) -> list[tf.Tensor]:
        """Item-feature embeddings besides item_representation's (the author), each [batch, dim]."""
        return [self.embed(f.name, self.lookup(f.name, features[f.name]))
                for f in self.schema.group("item") if f.name not in ITEM_REPRESENTATION]

    def context_embeddings(self, features: Mapping[str, tf.Tensor]) -> list[tf.Tensor]:
        """User, user-feature and author embeddings, each [batch, dim]."""
        return [*self.user_embeddings(features), *self.item_embeddings(features)]

    def index_features(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Raw features -> vocabulary indices (a feature without a vocabulary as it is)."""
        return {name: self.lookup(name, values) if self.schema.feature(name).vocab else values
                for name, values in features.items()}

    def score_candidate_features(self, context: Mapping[str, tf.Tensor],
                                 candidates: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The scores [users, N] of each user's candidates (`candidate_scoring.score_candidates`
        calls it, compiled or not). This default repeats each user's context N times and calls
        the model; a model whose user side does not depend on the item overrides
        it to compute that side once per user."""
        shape = tf.shape(candidates[S.ITEM_ID])
        rows = {name: tf.reshape(values, [-1]) for name, values in candidates.items()}
        rows.update({name: tf.repeat(values, shape[1], axis=0)
                     for name, values in context.items()})
        return tf.reshape(self(rows, training=False), shape)

    # --- Keras API -------------------------------------------------------------------------
    def build(self, input_shape=None):
        # Sub-layers create their variables on the first call (`registry.build_model` calls the
        # model once on a sample batch); Keras' default build would only warn that it cannot.
        self.built = True

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        raise NotImplementedError

    def call(self, features, training=False):
        return tf.sigmoid(tf.cast(self.forward(features, training=training)["logits"], tf.float32))

    @property
    def metrics(self):
        return [*self.loss_trackers.values(), self.auc]

    def compute_loss_terms(self, features: Mapping[str, tf.Tensor], labels: tf.Tensor,
                           training: bool) -> tuple[dict, tf.Tensor, tf.Tensor]:
        """The loss hook (cf. TFRS `Model.compute_loss`): ({term name: scalar, "loss": the total
        to minimise}, labels the metrics see [n], their click probabilities [n]). This default:
        the click loss plus each weighted auxiliary loss of `forward`, plus the embedding L2 in
        training. The train step adds the Keras layer losses (`self.losses`, e.g. a layer's
        kernel_regularizer) to "loss"."""
        read: set[str] = set()   # what the forward pass reads: the penalty's features
        out = self.forward(RecordingFeatures(features, read), training=training)
        logits = tf.cast(out["logits"], tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
        terms = {"ctr_loss": self.bce(labels, logits)}
        total = terms["ctr_loss"]
        for name, (weight, value) in out.get("aux_losses", {}).items():
            terms[name] = tf.cast(value, tf.float32)
            total = total + weight * terms[name]
        if training and self.config.embedding_l2:
            terms["embedding_l2"] = self.embedding_penalty(features, read)
            total = total + self.config.embedding_l2 * terms["embedding_l2"]
        terms["loss"] = total
        return terms, labels, tf.sigmoid(logits)

    def _update_metrics(self, terms, labels, probabilities):
        batch = tf.shape(labels)[0]
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value, sample_weight=batch)
        self.auc.update_state(labels, probabilities)
        # Only what this step measured: evaluation computes no auxiliary loss, so it reports none
        # (rather than zeros in val_* logs and TensorBoard).
        return {name: self.loss_trackers[name].result() for name in terms} | {
            self.auc.name: self.auc.result()}

    def train_step(self, data):
        features, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            terms, labels, probabilities = self.compute_loss_terms(features, labels,
                                                                   training=True)
            if self.losses:   # Keras layer losses (regularisers); none in the shipped models
                terms["loss"] = terms["loss"] + tf.add_n(self.losses)
            # Gradients are summed over replicas: each replica contributes its share of the mean.
            # The MBA penalty is a sum over the rows a batch touches, not a mean over examples:
            # each replica adds its local batch's rows in full, so that the replicas together
            # penalise the global batch's rows (an id in several replicas' examples counts once
            # per replica) instead of 1/replicas of them.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            penalty = (self.config.embedding_l2 * terms["embedding_l2"]
                       if "embedding_l2" in terms else 0.0)
            loss = (terms["loss"] - penalty) / replicas + penalty
            loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(terms, labels, probabilities)

    def test_step(self, data):
        features, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        terms, labels, probabilities = self.compute_loss_terms(features, labels, training=False)
        return self._update_metrics(terms, labels, probabilities)
