"""`CTRModel.input_feature_names` (what a model reads, hence what `qrec_tf.train` parses) and the
mini-batch aware L2 restricted to those features (issue 21)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import load_config, reads_key
from qrec_tf.models.registry import MODELS
from qrec_tf.optimizers import make_optimizer
from qrec_tf.testing import random_batch, random_data_constants
from tests.qrec_tf.models.test_queryrec import SCHEMA, TINY, VOCABS

USER_ITEM_HISTORY = [f.name for f in SCHEMA.group("user", "item", "history")]
COUNTS = {vocab: list(range(len(values), 0, -1)) for vocab, values in VOCABS.values.items()}
VOCABS_WITH_COUNTS = type(VOCABS)(VOCABS.values, COUNTS)


def build(name, *extra):
    config = load_config(f"configs/{name}.yaml",
                         [*(o for o in TINY if reads_key(name, o)), *extra]).model
    tf.keras.utils.set_random_seed(0)
    model = MODELS[name][0](config, SCHEMA, VOCABS_WITH_COUNTS, name=name,
                            **random_data_constants(config, VOCABS_WITH_COUNTS))
    model(SCHEMA.padding_batch(), training=False)
    return model


def batch(size=32, seed=0):
    return random_batch(SCHEMA, VOCABS, size, np.random.default_rng(seed))


def test_each_model_reads_what_its_code_reads():
    assert build("din").input_feature_names() == tuple(USER_ITEM_HISTORY)
    assert build("dcn").input_feature_names() == tuple(USER_ITEM_HISTORY)
    # PLE tells the tasks apart by the domain (in its loss, not its forward).
    assert build("ple").input_feature_names() == (S.DOMAIN, *USER_ITEM_HISTORY)
    # queryrec: the impression's time, the queries with their times, clicked items and
    # results, and the NIP targets (in training only).
    assert build("queryrec").input_feature_names() == (
        S.TIMESTAMP, *USER_ITEM_HISTORY, S.QUERY_KEYS, S.QUERY_WORD_IDS,
        S.QUERY_CLICKED_ITEM_IDS, S.QUERY_TIMESTAMPS, S.QUERY_CATEGORY_IDS,
        S.QUERY_SUBCATEGORY_IDS, S.NIP_POS_ITEM_IDS, S.NIP_NEG_ITEM_IDS)
    without_time = build("queryrec", "model.query_item_context=false",
                         "model.query_age_embedding=false",
                         "model.search_match=false").input_feature_names()
    assert not {S.TIMESTAMP, S.QUERY_TIMESTAMPS, S.QUERY_CLICKED_ITEM_IDS} & set(without_time)
    # The search -> target match reads the clicked items, the results and the times on its own.
    assert {S.TIMESTAMP, S.QUERY_TIMESTAMPS, S.QUERY_CLICKED_ITEM_IDS,
            S.QUERY_SUBCATEGORY_IDS} <= set(build(
                "queryrec", "model.query_item_context=false", "model.query_age_embedding=false",
                "model.search_match=true").input_feature_names())


def test_the_penalty_counts_only_the_rows_of_features_the_model_reads():
    model = build("din", "model.embedding_l2=0.5")
    features, labels = batch()
    terms, _, _ = model.compute_loss_terms(features, labels, training=True)

    def by_hand(names):
        total = 0.0
        for vocab, table in model.embedding_tables().items():
            used = [n for n in names if SCHEMA.feature(n).vocab == vocab]
            if not used:
                continue
            rows = np.unique(np.concatenate([np.ravel(model.lookup(n, features[n]).numpy())
                                             for n in used]))
            rows = rows[rows >= 2]                      # padding and OOV are not penalised
            inverse = 1.0 / np.asarray(COUNTS[vocab], np.float64)[rows - 2]
            total += float((inverse * (table.numpy()[rows] ** 2).sum(axis=1)).sum())
        return total

    expected = by_hand(USER_ITEM_HISTORY)
    assert float(terms["embedding_l2"]) == pytest.approx(expected, rel=1e-5)
    # The batch's query-clicked items (which din does not read) would have added rows.
    unread = by_hand([*USER_ITEM_HISTORY, S.QUERY_CLICKED_ITEM_IDS])
    assert unread > expected * 1.01


def train_weights(model, features, labels, steps=3):
    model.compile(optimizer=make_optimizer("lazy_adam", 1e-2))
    for _ in range(steps):
        model.train_step((features, labels))
    return [v.numpy() for v in model.trainable_variables]


def test_din_trains_the_same_whether_or_not_the_batch_carries_features_it_does_not_read():
    features, labels = batch()
    only_read = {name: features[name] for name in USER_ITEM_HISTORY}
    full = train_weights(build("din"), features, labels)
    lean = train_weights(build("din"), only_read, labels)
    assert len(full) == len(lean)
    for a, b in zip(full, lean):
        np.testing.assert_array_equal(a, b)
    # The steps moved the weights (the comparison is not of untrained models).
    start = [v.numpy() for v in build("din").trainable_variables]
    assert any(np.abs(a - s).max() > 1e-4 for a, s in zip(full, start))


def test_keras_fit_penalises_what_the_step_reads_without_tracing_the_read_features():
    """The penalty's features are those the forward pass of the step itself reads, so `fit`
    (and a replica's step) needs no trace of `input_feature_names` first."""
    model = build("din")                                  # configs/din.yaml: embedding_l2 0.1
    features, labels = batch()
    model.compile(optimizer=make_optimizer("lazy_adam", 1e-3))
    model.fit(tf.data.Dataset.from_tensors((features, labels)), verbose=0)
    assert model._input_feature_names is None
    result = model.get_metrics_result()
    assert float(result["embedding_l2"]) > 0 and keras.ops.isfinite(result["loss"])
