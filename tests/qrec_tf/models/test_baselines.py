"""PLE, SESRec and IV4Rec+ on random raw batches: the inputs each reads, PLE's per-task losses,
which auxiliary losses each computes, and IV4Rec+'s instrument table by hand."""

import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models.base import Vocabularies
from qrec_tf.models.iv4rec import IV4RecModel, instrument_tables
from qrec_tf.models.ple import PLEModel
from qrec_tf.models.sesrec import SESRecModel
from tests.qrec_tf.models.test_queryrec import (
    SCHEMA,
    TINY,
    VOCABS,
    assert_compiled_scoring_matches,
    batch,
    score,
    tiny,
    with_other,
)

# The schema, vocabularies, random batches and helpers of the other models' tests.
TINY = [*TINY, "model.ple.expert_units=[8]", "model.iv4rec.units=[8]"]
QUERY_FEATURES = (S.QUERY_KEYS, S.QUERY_WORD_IDS, S.QUERY_CLICKED_ITEM_IDS)
NIP_FEATURES = (S.NIP_POS_ITEM_IDS, S.NIP_NEG_ITEM_IDS)


def random_tables(seed=0):
    """IV4Rec+ tables: every other item has no query, the others 0-3; every query 3 words."""
    rng = np.random.default_rng(seed)
    items, queries = VOCABS.size(S.VOCAB_ITEMS), VOCABS.size(S.VOCAB_QUERIES)
    item_queries = rng.integers(2, queries, (items, 3)).astype(np.int32)
    item_queries[rng.random((items, 3)) < 0.3] = 0
    item_queries[::2] = 0
    query_words = rng.integers(2, VOCABS.size(S.VOCAB_WORDS), (queries, 3)).astype(np.int32)
    return {"item_queries": item_queries, "query_words": query_words}


_BUILT = {}


def built(cls, name):
    """The default model of a name, built once per module (building dominates these tests)."""
    if name not in _BUILT:
        _BUILT[name] = build(cls, name)
    return _BUILT[name]


def build(cls, name, *extra, **constants):
    config = load_config(f"configs/{name}.yaml", tiny(name, *extra, settings=TINY)).model
    if cls is IV4RecModel and not constants:
        constants = random_tables()
    tf.keras.utils.set_random_seed(0)
    model = cls(config, SCHEMA, VOCABS, name=name, **constants)
    model(batch(), training=False)
    return model


def changes(model, features, names):
    return np.abs(score(model, features) - score(model, with_other(features, names))).max() > 1e-6


MODELS = [(PLEModel, "ple"), (SESRecModel, "sesrec"), (IV4RecModel, "iv4rec")]


@pytest.mark.parametrize("cls, name", MODELS)
def test_each_reads_history_and_target_never_the_training_targets(cls, name):
    model, features = built(cls, name), batch()
    assert changes(model, features, (S.HIST_ITEM_IDS,)) and changes(model, features, (S.ITEM_ID,))
    assert not changes(model, features, NIP_FEATURES + (S.DOMAIN, S.TIMESTAMP))
    assert np.isfinite(score(model, features)).all() and score(model, features).shape == (5,)


def test_which_models_read_the_queries_and_their_clicked_items():
    features = batch()
    assert not changes(built(PLEModel, "ple"), features, QUERY_FEATURES)
    sesrec = built(SESRecModel, "sesrec")
    assert changes(sesrec, features, (S.QUERY_KEYS,))
    assert changes(sesrec, features, (S.QUERY_CLICKED_ITEM_IDS,))
    iv4rec = built(IV4RecModel, "iv4rec")
    assert changes(iv4rec, features, (S.QUERY_KEYS,))
    assert not changes(iv4rec, features, (S.QUERY_CLICKED_ITEM_IDS,))


def test_an_example_without_history_or_queries_scores():
    features = batch()
    empty = dict(features)
    for f in SCHEMA.group("history", "query"):
        empty[f.name] = np.full_like(features[f.name], f.pad)
    for cls, name in MODELS:
        assert np.isfinite(score(built(cls, name), empty)).all(), name


@pytest.mark.parametrize("cls, name, expected", [
    (PLEModel, "ple", set()), (SESRecModel, "sesrec", {"alignment_loss", "triplet_loss"}),
    (IV4RecModel, "iv4rec", {"iv_item_loss", "iv_user_loss"})])
def test_auxiliary_losses_only_in_training(cls, name, expected):
    model, features = built(cls, name), batch()
    out = model.forward(features, training=True)
    assert set(out.get("aux_losses", {})) == expected == set(model.aux_loss_names()) - {
        "search_ctr_loss"}
    for _, (weight, value) in out.get("aux_losses", {}).items():
        assert weight > 0 and np.isfinite(float(value)) and float(value) > 0
    assert not model.forward(features, training=False).get("aux_losses")
    zero_weights = ["model.sesrec.alignment_weight=0", "model.sesrec.triplet_weight=0",
                    "model.iv4rec.user_weight=0", "model.iv4rec.item_weight=0"]
    assert not build(cls, name, *tiny(name, settings=zero_weights)).forward(
        features, training=True).get("aux_losses")


def bce(labels, logits):
    return np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))


def test_ple_each_task_loss_is_over_its_own_examples():
    model, features = build(PLEModel, "ple", "model.ple.search_task_weight=0.5"), batch(size=6)
    features[S.DOMAIN] = np.array([S.FEED_DOMAIN, S.SEARCH_DOMAIN] * 3)
    labels = np.array([1, 0, 0, 1, 1, 1])
    out = model.forward(features, training=True)
    feed, search = np.arange(6) % 2 == 0, np.arange(6) % 2 == 1
    logits, search_logits = out["logits"].numpy(), out["search_logits"].numpy()
    terms, metric_labels, probabilities = model.compute_loss_terms(features, labels, training=True)
    np.testing.assert_allclose(terms["ctr_loss"], bce(labels[feed], logits[feed]), rtol=1e-5)
    np.testing.assert_allclose(terms["search_ctr_loss"],
                               bce(labels[search], search_logits[search]), rtol=1e-5)
    np.testing.assert_allclose(terms["loss"], terms["ctr_loss"] + 0.5 * terms["search_ctr_loss"],
                               rtol=1e-6)
    # AUC sees the feed examples only
    assert metric_labels.numpy().tolist() == [1, 0, 1]
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits[feed])), rtol=1e-5)
    evaluation, _, _ = model.compute_loss_terms(features, labels, training=False)
    assert set(evaluation) == {"ctr_loss", "loss"}
    # a batch of one task only: the other task's loss is 0, not nan
    features[S.DOMAIN] = np.full(6, S.FEED_DOMAIN)
    terms = model.compute_loss_terms(features, labels, training=True)[0]
    assert float(terms["search_ctr_loss"]) == 0.0


def test_iv4rec_item_without_queries_keeps_its_embedding_and_the_table_is_read():
    tables = random_tables()
    model, features = build(IV4RecModel, "iv4rec", **tables), batch()
    base = score(model, features)
    none = {**tables, "item_queries": np.zeros_like(tables["item_queries"])}
    other = build(IV4RecModel, "iv4rec", **none)
    other.set_weights(model.get_weights())
    assert np.abs(base - score(other, features)).max() > 1e-6
    item_idx = model.lookup(S.ITEM_ID, features[S.ITEM_ID])
    _, target = model.item_representation(features[S.ITEM_ID], features[S.CATEGORY_ID],
                                          features[S.SUBCATEGORY_ID])
    has = np.asarray(tf.reduce_any(tf.gather(model.item_queries, item_idx) != 0, -1))
    assert has.any() and not has.all()
    out = model.item_decomposition(target, tf.zeros([len(has), 8]), has)
    np.testing.assert_allclose(out["output"].numpy()[~has], target.numpy()[~has])


def test_instrument_table_by_hand():
    vocabs = Vocabularies({S.VOCAB_QUERIES: ["7_8", "9", "5"], S.VOCAB_ITEMS: [201, 202, 203],
                           S.VOCAB_WORDS: [7, 8, 9]})
    def row(key, words, clicked, counts, unclicked, sessions):
        return {S.QI_QUERY_KEY: key, S.QI_WORD_IDS: words, S.QI_CLICKED_ITEM_IDS: clicked,
                S.QI_CLICK_COUNTS: counts, S.QI_UNCLICKED_ITEM_IDS: unclicked,
                S.QI_SESSIONS: sessions}
    rows = [row("7_8", [7, 8], [201, 202], [1, 3], [203], 4),
            row("9", [9], [201], [1], [202], 6),
            row("5", [5], [], [], [201, 999], 9),
            row("4", [4], [201], [9], [], 9)]            # not in the query vocabulary
    item_queries, query_words = instrument_tables(rows, vocabs, queries_per_item=2, max_words=2)
    # indices: queries 7_8 -> 2, 9 -> 3, 5 -> 4; items 201 -> 2, 202 -> 3, 203 -> 4
    # 201: clicked once after 9 (6 sessions) and after 7_8 (4 sessions), shown after 5
    # 202: clicked 3 times after 7_8, shown after 9; 203: shown after 7_8
    assert item_queries.tolist() == [[0, 0], [0, 0], [3, 2], [2, 3], [2, 0]]
    # word indices: 7 -> 2, 8 -> 3, 9 -> 4; word 5 is not in the vocabulary (OOV 1)
    assert query_words.tolist() == [[0, 0], [0, 0], [2, 3], [4, 0], [1, 0]]


@pytest.mark.parametrize("cls, name", MODELS)
def test_compiled_scoring_equals_the_plain_one(cls, name):
    assert_compiled_scoring_matches(built(cls, name))


@pytest.mark.parametrize("cls, name", [(PLEModel, "ple"), (SESRecModel, "sesrec")])
def test_a_model_takes_only_its_own_data_constants(cls, name):
    """One constructor shape: `build_model` passes exactly what the class's `data_constants`
    returns, so a baseline neither needs nor silently swallows the contrastive positives."""
    assert cls.data_constants(load_config(f"configs/{name}.yaml",
                                          tiny(name, settings=TINY)).model,
                              DataDirectory("/nonexistent"), VOCABS) == {}
    with pytest.raises((TypeError, ValueError), match="query_positives"):
        build(cls, name, query_positives=np.zeros((3, 1), np.int64))
