"""The registered models on random raw batches: which inputs each reads, OOV ids, padding, and which
auxiliary losses each computes (and that none is computed at inference)."""

import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.candidate_scoring import (
    bucket_of,
    candidate_bucket,
    next_power_of_two,
    score_candidates,
)
from qrec_tf.config import load_config, reads_key
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models import query_side
from qrec_tf.models.registry import MODELS
from qrec_tf.testing import random_batch, random_data_constants, random_vocabularies

SCHEMA = S.Schema(history_length=6, max_queries=4, max_query_words=3, nip_positives=2,
                  nip_negatives=2)
VOCABS = random_vocabularies(200, n_words=50)
TINY = ["model.embedding_dim=8", "model.mlp_units=[8]", "model.attention_units=[4]",
        "model.sas_blocks=1", "model.contrastive_negatives=8", "model.sas_dropout=0.0",
        # The committed configs start the query side at 0 (LayerScale); these tests need an
        # untrained model that reads its queries.
        "model.query_scale_init=null"]


def tiny(name, *extra, settings=TINY):
    """The small `settings` that model `name` reads, then `extra`."""
    return [*(o for o in settings if reads_key(name, o)), *extra]


def build(name, positives=None, *extra):
    config = load_config(f"configs/{name}.yaml", tiny(name, *extra)).model
    constants = random_data_constants(config, VOCABS)
    if positives is not None:
        constants["query_positives"] = positives
    tf.keras.utils.set_random_seed(0)
    model = MODELS[name][0](config, SCHEMA, VOCABS, name=name, **constants)
    model(batch(), training=False)
    return model


def batch(seed=0, size=5):
    features, _ = random_batch(SCHEMA, VOCABS, size, np.random.default_rng(seed))
    return features


def score(model, features):
    return model(features, training=False).numpy()


def with_other(features, names, seed=1):
    """`features` with the features `names` taken from another random batch."""
    other = batch(seed, len(features[S.USER_ID]))
    return {**features, **{n: other[n] for n in names}}


QUERY_FEATURES = (S.QUERY_KEYS, S.QUERY_WORD_IDS)
NIP_FEATURES = (S.NIP_POS_ITEM_IDS, S.NIP_NEG_ITEM_IDS)


@pytest.mark.parametrize("name", ["din", "dcn"])
def test_models_without_queries_ignore_them_and_the_training_targets(name):
    model, features = build(name), batch()
    np.testing.assert_array_equal(score(model, features),
                                  score(model, with_other(features, QUERY_FEATURES + NIP_FEATURES)))


@pytest.mark.parametrize("name", ["din_query", "din_nip", "din_con", "queryrec"])
def test_query_models_read_the_queries_but_never_the_training_targets(name):
    model, features = build(name), batch()
    base = score(model, features)
    assert np.abs(base - score(model, with_other(features, QUERY_FEATURES))).max() > 1e-6
    np.testing.assert_array_equal(base, score(model, with_other(features, NIP_FEATURES)))


@pytest.mark.parametrize("name", ["din", "queryrec", "dcn"])
def test_every_model_reads_the_history_and_the_target_item(name):
    model, features = build(name), batch()
    base = score(model, features)
    for names in [(S.HIST_ITEM_IDS,), (S.ITEM_ID,)]:
        assert np.abs(base - score(model, with_other(features, names))).max() > 1e-6, names


def test_unseen_ids_all_map_to_the_oov_row():
    model, features = build("queryrec"), batch()
    unseen_a = {**features, S.ITEM_ID: features[S.ITEM_ID] * 0 + 7, S.USER_ID:
                features[S.USER_ID] * 0 + 99_999_999}
    unseen_b = {**features, S.ITEM_ID: features[S.ITEM_ID] * 0 + 8, S.USER_ID:
                features[S.USER_ID] * 0 + 12_345_678}
    a, b = score(model, unseen_a), score(model, unseen_b)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    keys = features[S.QUERY_KEYS].copy()
    keys[keys != S.PAD_KEY] = b"never-seen-query"
    assert np.isfinite(score(model, {**features, S.QUERY_KEYS: keys})).all()


def test_an_example_without_history_or_queries_scores():
    model, features = build("queryrec"), batch()
    empty = dict(features)
    for f in SCHEMA.group("history", "query"):
        empty[f.name] = np.full_like(features[f.name], f.pad)
    assert np.isfinite(score(model, empty)).all()


def test_scores_do_not_depend_on_the_rest_of_the_batch():
    model, features = build("queryrec"), batch(size=6)
    first_three = {k: v[:3] for k, v in features.items()}
    np.testing.assert_allclose(score(model, features)[:3], score(model, first_three), rtol=1e-5)


@pytest.mark.parametrize("name, expected", [
    ("din", set()), ("din_query", set()), ("din_nip", {"nip_loss"}),
    ("din_con", {"contrastive_loss"}), ("queryrec", {"nip_loss", "contrastive_loss"}),
    ("dcn", set())])
def test_auxiliary_losses_only_in_training(name, expected):
    model, features = build(name), batch()
    train_out = model.forward(features, training=True)
    assert set(train_out.get("aux_losses", {})) == expected
    din = model.config.section_named("din")
    weights = din and {"nip_loss": din.nip_weight, "contrastive_loss": din.contrastive_weight}
    for loss_name, (weight, value) in train_out.get("aux_losses", {}).items():
        assert weight == weights[loss_name] > 0 and np.isfinite(float(value))
    assert not model.forward(features, training=False).get("aux_losses")


def test_training_embeds_each_distinct_query_once_with_the_same_vectors():
    model, features = build("queryrec"), batch(size=8)
    keys = model.lookup(S.QUERY_KEYS, features[S.QUERY_KEYS]).numpy()
    words = model.lookup(S.QUERY_WORD_IDS, features[S.QUERY_WORD_IDS]).numpy()
    # Two unseen queries (OOV key 1) with different words: each slot keeps its own.
    keys[0, -1] = keys[1, -1] = 1
    words[0, -1], words[1, -1] = [2, 3, 4], [5, 6, 7]
    table = model.query_embedding.word_embedding.embeddings
    with tf.GradientTape(persistent=True) as tape:
        shared = model.embed_queries(tf.constant(keys), tf.constant(words), training=True)
        per_slot = model.embed_queries(tf.constant(keys), tf.constant(words), training=False)
        weights = tf.constant(np.random.default_rng(0).normal(size=shared.shape), tf.float32)
        shared_loss, per_slot_loss = (tf.reduce_sum(v * weights) for v in (shared, per_slot))
    np.testing.assert_allclose(shared.numpy(), per_slot.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(shared[0, -1], shared[1, -1])
    shared_grad, per_slot_grad = tape.gradient(shared_loss, table), tape.gradient(per_slot_loss,
                                                                                  table)
    np.testing.assert_allclose(tf.convert_to_tensor(shared_grad).numpy(),
                               tf.convert_to_tensor(per_slot_grad).numpy(), rtol=1e-5, atol=1e-6)
    flat = keys.reshape(-1)
    distinct = len(np.unique(np.where(flat == 1, -1 - np.arange(flat.size), flat)))
    assert distinct < flat.size
    assert shared_grad.indices.shape[0] == distinct * SCHEMA.max_query_words
    assert per_slot_grad.indices.shape[0] == flat.size * SCHEMA.max_query_words


@pytest.mark.parametrize("trains_items", [False, True])
def test_nip_moves_the_item_embeddings_only_when_configured(trains_items):
    model = build("din_nip", None, f"model.nip_trains_items={str(trains_items).lower()}")
    features = batch()
    items = model.embeddings[S.VOCAB_ITEMS].trainable_variables
    encoder = model.query_encoder.trainable_variables
    with tf.GradientTape() as tape:
        _, nip = model.forward(features, training=True)["aux_losses"]["nip_loss"]
    grads = tape.gradient(nip, [*items, *encoder])
    item_grads, encoder_grads = grads[:len(items)], grads[len(items):]

    def size(g):
        if g is None:
            return 0.0
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        return float(tf.reduce_sum(tf.abs(values)))

    assert sum(size(g) for g in encoder_grads) > 0
    assert (sum(size(g) for g in item_grads) > 0) == trains_items


def test_click_less_queries_give_no_contrastive_loss():
    rows, k = VOCABS.size(S.VOCAB_QUERIES), 5
    none = np.zeros((rows, k), np.int64)                  # no query has a positive
    model = build("din_con", none)
    _, value = model.forward(batch(), training=True)["aux_losses"]["contrastive_loss"]
    assert float(value) == 0.0
    some = none.copy()
    some[2:, 0] = 5                                       # every real query: one positive
    model = build("din_con", some)
    _, value = model.forward(batch(), training=True)["aux_losses"]["contrastive_loss"]
    assert float(value) != 0.0


@pytest.mark.parametrize("positive, collides", [(2, True), (5, False)])
def test_a_sampled_negative_that_is_a_positive_of_the_example_is_masked(positive, collides):
    table = np.zeros((VOCABS.size(S.VOCAB_QUERIES), 5), np.int64)
    table[2:, 0] = positive
    model = build("din_con", table)
    model.tasks[-1].item_rows = 3   # every negative drawn (from [2, 3)) is item index 2
    _, value = model.forward(batch(), training=True)["aux_losses"]["contrastive_loss"]
    # All of an example's negatives collide: no valid negative, so the example is left out.
    assert (float(value) == 0.0) == collides


def test_contrastive_model_needs_its_table():
    config = load_config("configs/din_con.yaml", tiny("din_con")).model
    with pytest.raises(ValueError, match="positives table"):
        MODELS["din_con"][0](config, SCHEMA, VOCABS, query_positives=None)


@pytest.mark.parametrize("name", ["din", "din_query", "queryrec", "dcn"])
def test_score_candidates_equals_scoring_every_row(name):
    """Two users x three candidates: the user side computed once (queryrec family) or repeated
    (the default) gives the scores of the six (user, candidate) rows."""
    model, users = build(name), batch(seed=3, size=2)
    candidates = batch(seed=4, size=6)
    item_names = [f.name for f in SCHEMA.group("item")]
    context = {n: v for n, v in users.items() if n not in item_names}
    grid = {n: candidates[n].reshape(2, 3) for n in item_names}
    scores = score_candidates(model, context, grid).numpy()
    assert scores.shape == (2, 3)
    rows = {**{n: np.repeat(v, 3, axis=0) for n, v in context.items()},
            **{n: candidates[n] for n in item_names}}
    np.testing.assert_allclose(scores.reshape(-1), score(model, rows), rtol=1e-5, atol=1e-6)


def assert_compiled_scoring_matches(model, candidates_per_user=37, n_users=3):
    """compiled=True (the export's default): lookups, then one XLA computation over the
    users and candidates padded to buckets; the scores of the uncompiled path, in the request's
    shape."""
    users = batch(seed=3, size=n_users)
    candidates = batch(seed=4, size=n_users * candidates_per_user)
    item_names = [f.name for f in SCHEMA.group("item")]
    context = {n: v for n, v in users.items() if n not in item_names}
    grid = {n: candidates[n].reshape(n_users, candidates_per_user) for n in item_names}
    plain = score_candidates(model, context, grid).numpy()
    compiled = score_candidates(model, context, grid, compiled=True).numpy()
    assert compiled.shape == plain.shape == (n_users, candidates_per_user)
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["din", "din_nip", "queryrec", "dcn"])
def test_compiled_scoring_equals_the_plain_one(name):
    assert_compiled_scoring_matches(build(name))


def test_next_power_of_two():
    got = [int(next_power_of_two(tf.constant(n))) for n in range(1, 70)]
    assert got == [1 << (n - 1).bit_length() for n in range(1, 70)]
    assert int(next_power_of_two(tf.constant(4096))) == 4096
    assert int(next_power_of_two(tf.constant(4097))) == 8192
    assert int(next_power_of_two(tf.constant(2**30))) == 2**30
    assert int(next_power_of_two(tf.constant(2**29 + 1))) == 2**30


def test_candidate_buckets_are_two_per_doubling_and_waste_at_most_a_half():
    got = {n: int(bucket_of(tf.constant(n))) for n in range(1, 1100)}
    assert [got[n] for n in (1, 8, 9, 13, 37, 100, 200, 255, 256, 257, 385, 1000)] == [
        8, 8, 12, 16, 48, 128, 256, 256, 256, 384, 512, 1024]
    assert all(n <= got[n] <= n + max(7, n / 2) for n in got)
    assert len({b for n, b in got.items() if n <= 512}) == 13  # shapes to compile up to 512
    assert all(candidate_bucket(n) == b for n, b in got.items())  # the Python copy


def test_embedding_l2_is_the_mini_batch_aware_penalty_of_the_rows_a_batch_touches():
    counts = {vocab: list(range(len(values), 0, -1)) for vocab, values in VOCABS.values.items()}
    vocabs = type(VOCABS)(VOCABS.values, counts)
    config = load_config("configs/queryrec.yaml", tiny("queryrec", "model.embedding_l2=0.5",
                                                       "model.contrastive_weight=0")).model
    model = MODELS["queryrec"][0](config, SCHEMA, vocabs, name="queryrec",
                                  **random_data_constants(config, vocabs))
    features = batch()
    model(features, training=False)
    terms, _, _ = model.compute_loss_terms(features, np.zeros(5), training=True)
    expected = 0.0
    for vocab, table in model.embedding_tables().items():
        names = [f.name for f in SCHEMA.features
                 if f.vocab == vocab and f.group != "nip"]
        rows = np.unique(np.concatenate([np.ravel(model.lookup(n, features[n]).numpy())
                                         for n in names]))
        rows = rows[rows >= 2]                      # padding and OOV are not penalised
        inverse = 1.0 / np.asarray(counts[vocab], np.float64)[rows - 2]
        expected += float((inverse * (table.numpy()[rows] ** 2).sum(axis=1)).sum())
    assert set(model.embedding_tables()) == set(VOCABS.values)
    assert float(terms["embedding_l2"]) == pytest.approx(expected, rel=1e-5)
    without = {k: v for k, v in terms.items() if k not in ("loss", "embedding_l2")}
    assert float(terms["loss"]) == pytest.approx(
        sum(float(v) * (config.din.nip_weight if k == "nip_loss" else 1.0)
            for k, v in without.items()) + 0.5 * expected, rel=1e-5)
    assert "embedding_l2" not in model.compute_loss_terms(features, np.zeros(5), training=False)[0]


@pytest.mark.parametrize("name", ["din_query", "din_nip", "queryrec"])
def test_a_query_scale_starting_at_zero_gives_the_scores_of_the_model_without_queries(name):
    """LayerScale at 0 on the query side: the CTR MLP reads zeros there, whatever the queries."""
    model, features = build(name, None, "model.query_scale_init=0.0"), batch()
    assert set(model.query_scales) == ({"pooled"} if name == "din_query" else
                                       {"encoded"} if name == "din_nip" else
                                       {"pooled", "encoded"})
    np.testing.assert_allclose(score(model, features),
                               score(model, with_other(features, QUERY_FEATURES)), rtol=1e-6)
    for scale in model.query_scales.values():
        scale.gamma.assign(np.ones(scale.gamma.shape))
    assert not np.allclose(score(model, features),
                           score(model, with_other(features, QUERY_FEATURES)))


@pytest.mark.parametrize("ctr_gradient", [True, False])
def test_query_encoder_ctr_gradient_false_keeps_the_click_loss_out_of_the_encoder(ctr_gradient):
    """query_encoder_ctr_gradient false: the click logit's gradient reaches the rest of the model
    but not one weight of the SAS encoder (NIP alone trains it)."""
    model = build("queryrec", None, f"model.query_encoder_ctr_gradient={str(ctr_gradient).lower()}")
    features = batch()
    with tf.GradientTape() as tape:
        logits = model.forward(features, training=False)["logits"]
        loss = tf.reduce_sum(logits)
    encoder = model.query_encoder.trainable_variables
    grads = tape.gradient(loss, encoder + model.ctr_logit.trainable_variables)
    encoder_grads = [g for g in grads[:len(encoder)] if g is not None]
    assert any(np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0 for g in encoder_grads) \
        == ctr_gradient
    assert np.abs(grads[-2].numpy()).sum() > 0      # the CTR head still learns


def test_query_encoder_ctr_gradient_false_needs_nip():
    with pytest.raises(ValueError, match="needs model.din.nip_weight"):
        load_config("configs/queryrec.yaml", ["model.query_encoder_ctr_gradient=false",
                                              "model.nip_weight=0"])


def test_positives_come_from_data_constants_only_with_a_contrastive_loss():
    """A model without the contrastive loss reads no positives table (no data directory
    needed); with it, `data_constants` is what passes the table to the constructor."""
    missing = DataDirectory("/nonexistent")
    config = load_config("configs/din.yaml", tiny("din")).model
    assert MODELS["din"].cls.data_constants(config, missing, VOCABS) == {}
    config = load_config("configs/din_con.yaml", tiny("din_con")).model
    with pytest.raises(Exception, match="nonexistent"):
        MODELS["din_con"].cls.data_constants(config, missing, VOCABS)


def test_a_layer_regulariser_adds_exactly_its_penalty_to_the_trained_loss():
    """The train step minimises compute_loss_terms' loss plus the Keras layer losses: a
    kernel_regularizer on the CTR logit adds 0.5 * sum(kernel ** 2), no more, no less."""
    import keras

    features, labels = random_batch(SCHEMA, VOCABS, 6, np.random.default_rng(1))
    model = build("din", None, "model.dropout=0.0")
    model.compile(optimizer=keras.optimizers.SGD(0.0))   # no update: the same weights twice
    plain = model.train_on_batch(features, labels, return_dict=True)["loss"]
    expected = float(model.compute_loss_terms(features, labels, training=True)[0]["loss"])
    assert float(plain) == pytest.approx(expected, rel=1e-6)
    model.ctr_logit.kernel.regularizer = keras.regularizers.L2(0.5)
    penalty = 0.5 * float(np.sum(model.ctr_logit.kernel.numpy() ** 2))
    assert penalty > 1e-3
    model.compile(optimizer=keras.optimizers.SGD(0.0))   # retrace with the regulariser
    regularised = model.train_on_batch(features, labels, return_dict=True)["loss"]
    assert float(regularised) == pytest.approx(expected + penalty, rel=1e-6)


CATEGORY_FEATURES = (S.CATEGORY_ID, S.SUBCATEGORY_ID)


@pytest.mark.parametrize("target", ["item_id", "item"])
def test_query_attention_target_item_reads_the_target_categories(target):
    """query_attention_target item: v_q attends with the target's whole representation
    projected to d (W [item || category || sub-category]), so the target's categories change
    v_q; item_id: only the target's item-id embedding does."""
    model = build("din_query", None, f"model.query_attention_target={target}")
    features = batch()
    user = model.encode_user(features)

    def pooled(feats):
        item_idx, rep = model.item_representation(feats[S.ITEM_ID], feats[S.CATEGORY_ID],
                                                  feats[S.SUBCATEGORY_ID])
        return model.pool_queries(user, item_idx, rep).numpy(), item_idx, rep

    v_q, item_idx, rep = pooled(features)
    other = with_other(features, CATEGORY_FEATURES, seed=4)
    moved = np.abs(v_q - pooled(other)[0]).max()
    if target == "item_id":
        assert model.query_target_projection is None and moved == 0.0
        return
    assert tuple(model.query_target_projection.kernel.shape) == (3 * 8, 8)
    assert moved > 1e-6
    kernel = model.query_target_projection.kernel.numpy()
    expected = model.query_attention(tf.constant(rep.numpy() @ kernel), user["queries"],
                                     user["query_idx"] != 0).numpy()
    np.testing.assert_allclose(v_q, expected, rtol=1e-5, atol=1e-6)


def test_query_attention_target_is_checked():
    with pytest.raises(ValueError, match="query_attention_target must be"):
        load_config("configs/queryrec.yaml", ["model.query_attention_target=category"])


def test_query_item_context_adds_the_clicked_items_and_the_results_to_each_query():
    """query_item_context: a query slot's vector is its text embedding plus W times the mean
    [item || category || sub-category] of its clicked items plus W [0 || category ||
    sub-category] of its results' categories (W: the target projection), the clicked items'
    categories from the item table; a slot without clicks or results gets neither."""
    config = load_config("configs/din_query.yaml",
                         tiny("din_query", "model.query_attention_target=item",
                              "model.query_item_context=true")).model
    table = random_data_constants(config, VOCABS, seed=6)["item_categories"]
    model = MODELS["din_query"][0](config, SCHEMA, VOCABS, name="m", item_categories=table)
    features = batch()
    clicked = features[S.QUERY_CLICKED_ITEM_IDS].copy()
    clicked[0, 0] = S.PAD_ID                                     # slot (0, 0): no clicks
    results = features[S.QUERY_SUBCATEGORY_IDS].copy()
    results[0, 0] = S.PAD_ID                                     # ... and no results
    features = {**features, S.QUERY_CLICKED_ITEM_IDS: clicked, S.QUERY_SUBCATEGORY_IDS: results}
    model(features, training=False)
    user = model.encode_user(features)
    embed = {v: model.embeddings[v].embeddings.numpy()
             for v in (S.VOCAB_ITEMS, S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES)}
    kernel = model.query_target_projection.kernel.numpy()
    item_idx = model.lookup(S.QUERY_CLICKED_ITEM_IDS, clicked).numpy()

    def category_rows(category, subcategory):
        return (embed[S.VOCAB_CATEGORIES][model.lookup(S.CATEGORY_ID, [category]).numpy()[0]],
                embed[S.VOCAB_SUBCATEGORIES][
                    model.lookup(S.SUBCATEGORY_ID, [subcategory]).numpy()[0]])

    for r, q in [(0, 0), (1, 2), (3, SCHEMA.max_queries - 1)]:
        reps = [np.concatenate([embed[S.VOCAB_ITEMS][idx], *category_rows(*table[idx][:2])])
                for idx in item_idx[r, q] if idx != 0]
        context = np.mean(reps, 0) @ kernel if reps else 0.0
        if results[r, q] != S.PAD_ID:
            context = context + np.concatenate([
                np.zeros(config.embedding_dim),
                *category_rows(features[S.QUERY_CATEGORY_IDS][r, q], results[r, q])]) @ kernel
        np.testing.assert_allclose(user["queries"][r, q].numpy(),
                                   user["query_text"][r, q].numpy() + context,
                                   rtol=1e-5, atol=1e-6)
    assert not any(item_idx[0, 0])
    np.testing.assert_allclose(user["queries"][0, 0].numpy(), user["query_text"][0, 0].numpy())


def test_query_item_context_needs_the_item_projection():
    with pytest.raises(ValueError, match="query_item_context needs"):
        load_config("configs/queryrec.yaml", ["model.query_attention_target=item_id"])


def test_item_categories_agree_with_the_training_split(data_dir):
    """data.item_categories (the Beam job's item_categories.tsv): each training target's row
    holds the target's (category, sub-category, author); the padding and OOV rows hold PAD_ID."""
    from qrec_tf import data as qdata

    items = [value for value, _ in S.read_vocab(data_dir, S.VOCAB_ITEMS)]
    table = qdata.item_categories(data_dir, items)
    assert table.shape == (len(items) + 2, 3) and (table[:2] == S.PAD_ID).all()
    row_of = {int(v): r for r, v in enumerate(items, start=2)}
    seen = 0
    for batch in qdata.make_dataset(data_dir, "train", 512, shuffle=False):
        for item, category, subcategory, author in zip(
                batch[S.ITEM_ID].numpy(), batch[S.CATEGORY_ID].numpy(),
                batch[S.SUBCATEGORY_ID].numpy(), batch[S.AUTHOR_ID].numpy()):
            assert tuple(table[row_of[int(item)]]) == (category, subcategory, author)
            seen += 1
    assert seen > 1000


def test_query_age_embedding_adds_the_vector_of_each_querys_age_bucket():
    """query_age_embedding: each real query slot's vector gains the age bucket's vector of
    (timestamp - query_timestamps) in hours, computed inside the graph from the raw times; a
    padding slot gains nothing. The table starts at zero: the model then scores as without it."""
    config = load_config("configs/din_query.yaml",
                         tiny("din_query", "model.query_age_embedding=true")).model
    tf.keras.utils.set_random_seed(0)
    model = MODELS["din_query"][0](config, SCHEMA, VOCABS, name="m")
    features = batch()
    model(features, training=False)
    user = model.encode_user(features)
    np.testing.assert_array_equal(user["queries"].numpy(), user["query_text"].numpy())
    table = np.random.default_rng(3).normal(size=model.query_age.table.embeddings.shape)
    model.query_age.table.embeddings.assign(table.astype(np.float32))
    user = model.encode_user(features)
    hours = (features[S.TIMESTAMP][:, None] - features[S.QUERY_TIMESTAMPS]) / 3_600_000
    bucket = np.searchsorted(model.query_age.boundaries_hours, hours, side="right")
    real = features[S.QUERY_KEYS] != S.PAD_KEY
    expected = user["query_text"].numpy() + np.where(real[..., None], table[bucket], 0.0)
    np.testing.assert_allclose(user["queries"].numpy(), expected, rtol=1e-5, atol=1e-6)
    # The same ages from other absolute times give the same scores; other ages other scores.
    shifted = {**features, S.TIMESTAMP: features[S.TIMESTAMP] + 86_400_000,
               S.QUERY_TIMESTAMPS: np.where(real, features[S.QUERY_TIMESTAMPS] + 86_400_000,
                                            S.PAD_ID)}
    np.testing.assert_allclose(score(model, shifted), score(model, features), rtol=1e-6)
    later = {**features, S.TIMESTAMP: features[S.TIMESTAMP] + 30 * 86_400_000}
    assert np.abs(score(model, later) - score(model, features)).max() > 1e-6


def test_search_match_adds_a_linear_term_of_the_time_decayed_counts_to_the_logit():
    """search_match: the logit is the model's own plus w^T m, m the 40 time-decayed match counts
    (clicked items x 4 attributes, results of sessions with and without a click x 2, 5
    half-lives each), w starting at 0. The counts are checked by hand for one user whose only
    search clicked the target item itself 6 hours before the impression."""
    config = load_config("configs/din.yaml", tiny("din", "model.search_match=true")).model
    constants = random_data_constants(config, VOCABS)
    features = batch(size=3)
    # Item row 2 (the first item): row 0's target, with its category, sub-category and author.
    item = VOCABS.values[S.VOCAB_ITEMS][0]
    target = [features[n][0] for n in (S.CATEGORY_ID, S.SUBCATEGORY_ID, S.AUTHOR_ID)]
    constants["item_categories"][2] = target
    model = MODELS["din"][0](config, SCHEMA, VOCABS, name="m", **constants)
    q, c = SCHEMA.max_queries, SCHEMA.query_clicked_items
    one = {**features}
    one[S.ITEM_ID] = np.array([item, *features[S.ITEM_ID][1:]])
    one[S.QUERY_KEYS] = np.array([[b""] * (q - 1) + [b"7"]] * 3)
    one[S.QUERY_TIMESTAMPS] = np.where(one[S.QUERY_KEYS] != b"",
                                       features[S.TIMESTAMP][:, None] - 6 * 3_600_000, -1)
    clicked = np.full((3, q, c), S.PAD_ID)
    clicked[:, -1, 0] = item
    one[S.QUERY_CLICKED_ITEM_IDS] = clicked
    # The session's results: row 0's target categories (a session with a click).
    one[S.QUERY_CATEGORY_IDS] = np.where(one[S.QUERY_KEYS] != b"", target[0], -1)
    one[S.QUERY_SUBCATEGORY_IDS] = np.where(one[S.QUERY_KEYS] != b"", target[1], -1)
    model(one, training=False)
    kernel = model.search_match_logit.kernel
    assert tuple(kernel.shape) == (40, 1) and not kernel.numpy().any()
    base = model.forward(one)["logits"].numpy()
    m = query_side.search_match_features(model, model.encode_user(one), one,
                                    model.lookup(S.ITEM_ID, one[S.ITEM_ID])).numpy()
    decay = np.log1p(0.5 ** (6.0 / np.array([1.0, 6.0, 24.0, 72.0, 240.0])))
    np.testing.assert_allclose(m[0, :20], np.tile(decay, 4), rtol=1e-6)   # item, author, ...
    np.testing.assert_allclose(m[0, 20:30], np.tile(decay, 2), rtol=1e-6)  # results, clicked
    np.testing.assert_array_equal(m[0, 30:], 0.0)                         # no click-less one
    # The same session without its click: its results count as a click-less session's.
    clickless = {**one, S.QUERY_CLICKED_ITEM_IDS: np.full((3, q, c), S.PAD_ID)}
    m_clickless = query_side.search_match_features(
        model,         model.encode_user(clickless), clickless,
        model.lookup(S.ITEM_ID, clickless[S.ITEM_ID])).numpy()
    np.testing.assert_array_equal(m_clickless[0, :30], 0.0)
    np.testing.assert_allclose(m_clickless[0, 30:], np.tile(decay, 2), rtol=1e-6)
    w = np.random.default_rng(0).normal(size=(40, 1)).astype(np.float32)
    kernel.assign(w)
    np.testing.assert_allclose(model.forward(one)["logits"].numpy(), base + m @ w[:, 0],
                               rtol=1e-5, atol=1e-5)
