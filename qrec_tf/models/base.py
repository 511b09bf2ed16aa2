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

from qrec_tf import losses
from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.layers.dense_stack import mlp
from qrec_tf.layers.din_attention import DINAttention
from qrec_tf.layers.embedding import SparseEmbedding
from qrec_tf.layers.id_lookup import bucketed, lookup_size, make_lookup, unbucketed, values_end
from qrec_tf.layers.xla import static_shapes
from qrec_tf.models import row_frequencies
from qrec_tf.models.recording_features import RecordingFeatures

# Item features embedded by item_representation; the item group's others join the CTR input alone.
ITEM_REPRESENTATION = (S.ITEM_ID, S.CATEGORY_ID, S.SUBCATEGORY_ID)
# score_candidates pads the candidate count n before XLA compiles it: up to the next power of two
# or 1.5 x a power of two (at least MIN_CANDIDATE_STEP): two shapes per doubling of n (13 up to
# 512), each about 1.5-3 s of compilation that the export's warmup requests pay on load (issue
# 32; eight per doubling made 32 buckets, over a minute of warmup), for at most 1/2 more work.
MIN_CANDIDATE_STEP = 8


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
        per_row = np.zeros(self.size(vocab), np.float64)
        counts = np.asarray(self.counts[vocab], np.float64)
        per_row[2:2 + len(counts)] = np.maximum(counts, 1.0)
        return row_frequencies.inverse_frequencies(per_row)


def _next_power_of_two(n: tf.Tensor) -> tf.Tensor:
    """Smallest power of two >= n (int32 scalar, 1 <= n <= 2**30): n - 1 with every bit below
    its highest set bit set, plus one (exact, unlike a float log)."""
    n = tf.cast(n, tf.int32) - 1
    for shift in (1, 2, 4, 8, 16):
        n = tf.bitwise.bitwise_or(n, tf.bitwise.right_shift(n, shift))
    return n + 1


def _candidate_bucket(n: tf.Tensor) -> tf.Tensor:
    """The candidate count n (int32 scalar >= 1) rounded up to its XLA bucket: the smallest of
    p / 2 + p / 4 and p >= n, p the smallest power of two >= n, and at least
    MIN_CANDIDATE_STEP."""
    power = _next_power_of_two(n)
    three_quarters = power // 2 + power // 4
    bucket = tf.where(n <= three_quarters, three_quarters, power)
    return tf.maximum(MIN_CANDIDATE_STEP, bucket)


class CTRModel(keras.Model):
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
        self._compiled_scoring = None   # score_candidates(compiled=True)'s XLA function
        self._inputs_are_indices = False  # only inside `indexed_inputs()`
        self._input_feature_names: tuple[str, ...] | None = None  # input_feature_names()
        self._tracing_reads = False       # only while input_feature_names() traces

    def use_row_counts(self, counts: Mapping[str, np.ndarray]) -> None:
        """The L2's n_j per row counted in examples (`embedding_l2_counts: rows`), not the
        vocabularies' counts: `registry.build_model` gives them before returning the model."""
        self.inverse_frequencies.update({
            vocab: tf.constant(row_frequencies.inverse_frequencies(rows))
            for vocab, rows in counts.items()})

    @classmethod
    def data_constants(cls, config: ModelConfig, data, vocabularies: Vocabularies) -> dict:
        """Constructor keywords read from `data` (a `data_dir.DataDirectory`; none here)."""
        return {}

    # --- pieces subclasses use -----------------------------------------------------------------
    def din_attention(self, name: str) -> DINAttention:
        """DIN's target attention (eqs 1-2) as the config sets it (model.attention_*)."""
        cfg = self.config
        return DINAttention(cfg.attention_units, cfg.attention_activation, cfg.attention_softmax,
                            jit_compile=cfg.attention_jit_compile, packed=cfg.attention_packed,
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
        vocabularies' hash tables: `score_candidates(compiled=True)`, a jit-compiled train step
        on indexed batches (benchmarks.vocab_scaling). It must hold while such a function
        traces; a function traced inside it keeps reading indices afterwards."""
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
        (e.g. `model.query_clicked_items`), with no list to keep in step. The trace runs no op
        (no variable changes, no random draw); call it first outside a replica context (`fit`
        does, in `make_train_function`)."""
        if self._input_feature_names is None:
            with tf.init_scope():
                self._input_feature_names = self._trace_read_features()
        return self._input_feature_names

    def _trace_read_features(self) -> tuple[str, ...]:
        features = [f for f in self.schema.features if f.group != "label"]
        specs = self.schema.tensor_specs(features)
        label = tf.TensorSpec([None], self.schema.feature(S.LABEL).tf_dtype)
        read: set[str] = set()
        self._tracing_reads = True
        try:
            for training in (True, False):
                # No autograph: its source conversion of every model function cost ~half of
                # a small training run, and which features are read does not depend on it.
                tf.function(lambda x, y, training=training: self.compute_loss_terms(
                    RecordingFeatures(x, read), y, training=training)[0]["loss"],
                    autograph=False).get_concrete_function(specs, label)
        finally:
            self._tracing_reads = False
        return tuple(f.name for f in features if f.name in read)

    def embedding_penalty(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """DIN's mini-batch aware L2 (losses.mini_batch_aware_l2) summed over the tables, on the
        rows that the batch's inputs touch: the features the model reads
        (`input_feature_names`), the NIP targets not (they are not inputs). A feature the batch
        carries but the model does not read (din: query_clicked_item_ids) adds nothing."""
        total = tf.constant(0.0)
        if self._tracing_reads:   # the penalty reads nothing that the model does not
            return total
        for vocab, table in self.embedding_tables().items():
            names = self.penalised_features(vocab)
            if names:
                indices = tf.concat([tf.reshape(self.lookup(name, features[name]), [-1])
                                     for name in names], axis=0)
                total += losses.mini_batch_aware_l2(table, indices,
                                                    self.inverse_frequencies[vocab])
        return total

    def penalised_features(self, vocab: str) -> list[str]:
        """The features whose rows of table `vocab` the mini-batch aware L2 penalises: those of
        the vocabulary that the model reads, the NIP targets not."""
        read = set(self.input_feature_names())
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

    def score_candidates(self, context: Mapping[str, tf.Tensor],
                         candidates: Mapping[str, tf.Tensor], compiled: bool = False
                         ) -> tf.Tensor:
        """Click probabilities of each user's candidate items, float32 [users, N] (the
        `score_candidates` serving signature).

        `context`: every non-item model feature, [users, *shape]; `candidates`: the item features
        (schema group "item"), [users, N]. With `compiled` (the export's default), the
        vocabulary lookups run first and everything after them runs as one XLA computation, with
        the users padded to a power of two and N to a bucket (MIN_CANDIDATE_STEP) so that XLA
        compiles once per bucket rather than once per request shape.
        """
        if not compiled:
            return self.score_candidate_features(context, candidates)
        index = self.index_features
        context, candidates = index(context), index(candidates)
        users, n = tf.unstack(tf.shape(candidates[S.ITEM_ID]))
        # Padding users and candidates are index 0 everywhere (the padding rows); their scores
        # are cut off below. Users are padded to a power of two, candidates by at most 1/2
        # (_candidate_bucket): a bounded number of shapes to compile under request batching.
        extra_users = _next_power_of_two(users) - users
        extra_n = _candidate_bucket(n) - n
        context = {name: tf.pad(values, [[0, extra_users]] + [[0, 0]] * (len(values.shape) - 1))
                   for name, values in context.items()}
        candidates = {name: tf.pad(values, [[0, extra_users], [0, extra_n]])
                      for name, values in candidates.items()}
        if self._compiled_scoring is None:
            self._compiled_scoring = tf.function(self.score_candidate_features,
                                                 jit_compile=True)
        # Read while the compiled function traces; static_shapes: the layers' padded paths.
        with self.indexed_inputs(), static_shapes():
            scores = self._compiled_scoring(context, candidates)
        return scores[:users, :n]

    def index_features(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Raw features -> vocabulary indices (a feature without a vocabulary as it is)."""
        return {name: self.lookup(name, values) if self.schema.feature(name).vocab else values
                for name, values in features.items()}

    def score_candidate_features(self, context: Mapping[str, tf.Tensor],
                                 candidates: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """score_candidates without the compilation. This default repeats each user's context N
        times and calls the model; a model whose user side does not depend on the item overrides
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
        out = self.forward(features, training=training)
        logits = tf.cast(out["logits"], tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
        terms = {"ctr_loss": self.bce(labels, logits)}
        total = terms["ctr_loss"]
        for name, (weight, value) in out.get("aux_losses", {}).items():
            terms[name] = tf.cast(value, tf.float32)
            total = total + weight * terms[name]
        if training and self.config.embedding_l2:
            terms["embedding_l2"] = self.embedding_penalty(features)
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

    # --- Keras 3.15 workarounds for several replicas ------------------------------------------
    # Keras 3's `fit` fails with several replicas in sync (keras-team/keras#20585, open;
    # tensorflow/tensorflow#72388): (1) under any strategy with 2+ replicas, (2) under a
    # MultiWorkerMirroredStrategy of 2+ workers; elsewhere Keras' own code runs. Tested by
    # tests/qrec_tf/test_distribute.py (the 2-replica and the 2-process runs fail without them):
    # delete this block once Keras fixes these.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """(1) Keras takes a first batch from the epoch's iterator and reduces it to a mean over
        the replicas to build the model symbolically, which fails on string features (`AddN` of
        string / `Attempt to convert a value (PerReplica ...)`). `registry.build_model` has
        built the model on a sample batch already: only the optimizer's variables are left."""
        if self.distribute_strategy.num_replicas_in_sync == 1:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
        self._post_build()

    def make_train_function(self, force=False):
        if self.config.embedding_l2:
            self.input_feature_names()   # traced here, outside the replicas' step
        self._logs_as_vectors_under_multi_worker()
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._logs_as_vectors_under_multi_worker()
        return super().make_test_function(force=force)

    def _logs_as_vectors_under_multi_worker(self):
        """(2) Keras reduces the step's logs across workers with `strategy.reduce("MEAN", v,
        axis=0)`, which fails on scalars (`Invalid reduction dimension 0 for input with 0
        dimensions`): each log goes out as shape [1] and comes back a scalar (the mean over the
        replicas)."""
        from qrec_tf.distribute import in_multi_worker_mode

        if in_multi_worker_mode(self.distribute_strategy) and "train_step" not in vars(self):
            self.train_step = _logs_as_vectors(self.train_step)
            self.test_step = _logs_as_vectors(self.test_step)


def _logs_as_vectors(step):
    """A train or test step whose scalar logs are returned with shape [1] (workaround (2))."""
    def wrapped(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    return wrapped

