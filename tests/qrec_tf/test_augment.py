"""The diffusion augmentation stage: item space and matrix by hand, ranking metrics by hand, a
planted query-item structure recovered better than popularity, the table's rules, determinism,
resume after a kill, CLI errors, and the trained table feeding din_con_diffusion."""

import dataclasses
import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import augment, positives
from qrec_tf import schema as S

TOPICS, ITEMS_PER_TOPIC, QUERIES_PER_TOPIC = 8, 10, 25
EPOCHS = 30
TINY = ["model.hidden_units=[64]", "model.step_embedding_dim=8", "train.batch_size=16",
        f"train.epochs={EPOCHS}", "output.holdout_fraction=0.25", "output.top_k=5",
        "output.quality_k=5", "train.learning_rate=0.003"]


def write_data(root, rows, vocabulary):
    """A data directory with query_items/ (rows: (key, clicked {item: count}, unclicked)) and
    vocab/items.txt, as the Beam job writes them."""
    os.makedirs(os.path.join(root, S.QUERY_ITEMS_DIR))
    os.makedirs(os.path.join(root, S.VOCAB_DIR))
    path = os.path.join(root, S.QUERY_ITEMS_DIR, "query_items-00000-of-00001.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options=S.COMPRESSION) as writer:
        for key, clicked, unclicked in rows:
            words = [int(w) for w in key.split("_")]
            writer.write(S.query_items_example(key, words, clicked, unclicked, sessions=1))
    with open(S.vocab_path(root, S.VOCAB_ITEMS), "w") as f:
        f.writelines(f"{item}\t1\n" for item in vocabulary)
    return str(root)


def planted_rows(seed=0):
    """Queries of TOPICS topics: each shows 6 items of its topic (popular ones more often) and
    one random item, and clicks 1-3 of its on-topic items; one query in five has no click.
    Topics are equally popular, so global popularity knows nothing about a query's topic."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, ITEMS_PER_TOPIC + 1) ** 0.5
    popularity /= popularity.sum()
    item = lambda topic, j: 1000 + 100 * topic + int(j)  # noqa: E731
    rows = []
    for topic in range(TOPICS):
        for q in range(QUERIES_PER_TOPIC):
            shown = rng.choice(ITEMS_PER_TOPIC, 6, replace=False, p=popularity)
            other = item((topic + 1 + rng.integers(TOPICS - 1)) % TOPICS,
                         rng.integers(ITEMS_PER_TOPIC))
            clicks = 0 if rng.random() < 0.2 else 1 + rng.integers(3)
            clicked = {item(topic, j): int(1 + rng.integers(3)) for j in shown[:clicks]}
            unclicked = [item(topic, j) for j in shown[clicks:]] + [other]
            rows.append((f"{topic + 1}_{q + 1}", clicked, unclicked))
    rng.shuffle(rows)  # the stage must not depend on the record order
    return rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rows = planted_rows()
    vocabulary = sorted({i for _, c, u in rows for i in [*c, *u]})
    return write_data(tmp_path_factory.mktemp("planted"), rows, vocabulary), rows


@pytest.fixture(scope="module")
def augmented(planted, tmp_path_factory):
    data_dir, _ = planted
    out = str(tmp_path_factory.mktemp("augmented"))
    assert augment.main(["--data", data_dir, "--output", out, "--verbose", "0",
                         *[arg for s in TINY for arg in ("--set", s)]]) == 0
    with open(os.path.join(out, augment.SUMMARY_FILE)) as f:
        return out, json.load(f)


# --- by hand -------------------------------------------------------------------------------------
def hand_table():
    # a: clicked 10 (x3), 11 (x1), shown 12, 13; b: shown 10, 12, 14; c: clicked 12 (x2), shown 10
    return augment.QueryItemTable(
        keys=["a", "b", "c"],
        clicked_rows=np.array([0, 0, 2]), clicked_items=np.array([10, 11, 12]),
        click_counts=np.array([3, 1, 2]),
        unclicked_rows=np.array([0, 0, 1, 1, 1, 2]),
        unclicked_items=np.array([12, 13, 10, 12, 14, 10]))


def test_item_space_is_the_most_exposed_vocabulary_items_and_counts_the_rest():
    table, vocabulary = hand_table(), np.array([10, 11, 12, 13])
    # exposure (distinct queries): 10: 3, 12: 3, 11: 1, 13: 1, 14: 1; clicks break ties
    space = augment.choose_item_space(table, vocabulary, max_items=3)
    assert space.item_ids.tolist() == [10, 12, 11]
    assert space.report == {
        "search_items": 5, "items_in_space": 3, "items_outside_item_vocabulary": 1,
        "items_outside_cap": 1, "clicked_pairs_outside": 0, "clicks_outside": 0,
        "unclicked_pairs_outside": 2, "share_of_clicks_inside": 1.0}
    assert space.columns(np.array([12, 13, 10, 99])).tolist() == [1, -1, 0, -1]
    small = augment.choose_item_space(table, vocabulary, max_items=1)
    assert small.item_ids.tolist() == [10]
    assert small.report["clicked_pairs_outside"] == 2 and small.report["clicks_outside"] == 3
    assert small.report["unclicked_pairs_outside"] == 4
    assert small.report["share_of_clicks_inside"] == 0.5


def test_matrix_rows_by_hand():
    table = hand_table()
    space = augment.choose_item_space(table, np.array([10, 11, 12, 13]), 3)
    matrix = augment.build_matrix(table, space)
    # columns: 10 -> 0, 12 -> 1, 11 -> 2; 13 and 14 are outside the space
    assert matrix.row_splits.tolist() == [0, 3, 5, 7]
    assert matrix.columns.tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert matrix.positive.tolist() == [True, False, True, False, False, False, True]
    assert matrix.click_counts.tolist() == [3, 0, 1, 0, 0, 0, 2]
    assert matrix.positives_per_row().tolist() == [2, 0, 1]
    dropped = matrix.without(np.array([True, False, False, False, False, False, True]))
    assert dropped.row_splits.tolist() == [0, 2, 4, 5]
    assert dropped.columns.tolist() == [1, 2, 0, 1, 0]


def test_dense_vectors_use_the_configured_values():
    table = hand_table()
    space = augment.choose_item_space(table, np.array([10, 11, 12, 13]), 3)
    matrix = augment.build_matrix(table, space)
    values = augment.AugmentDataConfig(positive_value=0.75, negative_value=-0.75, neutral_value=0.1)
    dense = augment.DenseRows(matrix, 3, values)
    batch_row, column, positive = dense.entries(tf.constant([2, 0], tf.int64))
    x = dense.scatter(batch_row, column, dense.values(positive), tf.constant(2)).numpy()
    np.testing.assert_allclose(x, [[-0.75, 0.75, 0.1], [0.75, -0.75, 0.75]])


def test_ranking_quality_by_hand():
    ranked = np.array([[3, 1, -1], [5, 6, 7]])
    quality = augment.ranking_quality(ranked, [np.array([1, 7]), np.array([5])], k=3)
    # query 0: hit at rank 1 of 2 targets; query 1: hit at rank 0 of 1 target
    ndcg_0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert quality["recall"] == pytest.approx(round((0.5 + 1.0) / 2, 4))
    assert quality["ndcg"] == pytest.approx(round((ndcg_0 + 1.0) / 2, 4))


def test_popularity_skips_what_the_query_already_shows():
    table = hand_table()
    space = augment.choose_item_space(table, np.array([10, 11, 12, 13]), 3)
    matrix = augment.build_matrix(table, space)
    # clicks per column: 0 (item 10): 3, 1 (item 12): 2, 2 (item 11): 1
    ranked = augment.popularity_ranking(matrix, np.array([1, 2]), k=2)
    assert ranked.tolist() == [[2, -1], [2, -1]]   # rows b and c show columns 0 and 1


def test_positives_table_puts_clicks_first_then_generated_items():
    table, space = hand_table(), augment.ItemSpace(np.array([10, 12, 11]), {})
    generated = {1: np.array([2, -1]), 2: np.array([2, 0])}
    result = augment.positives_table(table, space, generated, top_k=2)
    assert result == {"a": [10, 11], "b": [11], "c": [12, 11]}


def dense_top_k(scores, k):
    """The reference: a stable sort of every row at once (ties: lower column first)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.isinf(np.take_along_axis(scores, order, 1)), -1, order)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_batched_top_k_equals_a_dense_top_k_with_ties(batch_size):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (11, 9)).astype(np.float32)   # many ties
    scores[2, :] = 1.0                                         # a row of nothing but ties
    scores[5, 3:] = -np.inf                                    # only 3 items may be picked
    rows = np.array([5, 0, 2, 10, 2, 7, 1, 3, 4, 6, 8, 9])     # any order, repeats
    table = tf.constant(scores)
    starts = []

    def lookup(batch_rows, start):
        starts.append(start)
        return tf.gather(table, batch_rows)

    ranked = augment.top_k_in_batches(lookup, rows, 4, batch_size)
    np.testing.assert_array_equal(ranked, dense_top_k(scores[rows], 4))
    assert ranked[rows.tolist().index(2)].tolist() == [0, 1, 2, 3]
    assert ranked[0].tolist() == [*np.argsort(-scores[5, :3], kind="stable"), -1]
    # k beyond the item count: every column once, then nothing
    np.testing.assert_array_equal(augment.top_k_in_batches(lookup, rows, 20, batch_size),
                                  dense_top_k(scores[rows], 9))
    assert augment.top_k_in_batches(lookup, rows[:0], 4, batch_size).shape == (0, 4)


def test_generation_batch_fits_its_memory_budget():
    output = augment.AugmentOutputConfig(batch_size=1024, batch_memory_mb=1024)
    # (4 + 5) x 20,000 float32 = 703 KiB a query: 1,491 fit, so the configured 1,024 stays
    assert augment.generation_batch_size(output, 5, 20_000) == 1024
    # at 2M items 70.3 MiB a query: 14 fit in 1 GiB
    assert augment.generation_batch_size(output, 5, 2_000_000) == 1024 * 2**20 // (9 * 8_000_000)
    assert augment.generation_batch_size(output, 5, 10**9) == 1        # never below one query


# --- the planted structure -----------------------------------------------------------------------
def test_diffusion_recovers_held_out_clicks_better_than_popularity(augmented):
    _, summary = augmented
    quality = summary["quality"]
    assert quality["queries"] == round(0.25 * summary["queries"]["with_clicks"])
    diffusion, popularity = quality["diffusion"], quality["popularity"]
    # A query's clicks are in its topic (1 of 6); popularity cannot know which.
    assert diffusion["recall"] >= popularity["recall"] + 0.25, quality
    assert diffusion["ndcg"] >= popularity["ndcg"] + 0.2, quality
    assert quality["below_popularity"] is False


def test_below_popularity_by_hand():
    """The flag behind the stage's warning: the model's Recall@K strictly below popularity's;
    False without held-out queries (no figures)."""
    def quality(model, popularity):
        return {"diffusion": {"recall": model, "ndcg": 0.0},
                "popularity": {"recall": popularity, "ndcg": 0.0}}

    assert augment.below_popularity(quality(0.0005, 0.0072)) is True
    assert augment.below_popularity(quality(0.0072, 0.0072)) is False
    assert augment.below_popularity(quality(0.2, 0.1)) is False
    assert augment.below_popularity({"diffusion": None, "popularity": None}) is False


def check_table_rules(table: dict, rows) -> dict[str, list[int]]:
    """Asserts the positives table's rules on planted `rows`: a row per query, never a known
    negative, a clicked query's clicks most clicked first, a click-less query's 5 distinct items
    from the item space. Returns the click-less queries' items by key."""
    assert set(table) == {key for key, _, _ in rows}
    space = {i for _, c, u in rows for i in [*c, *u]}
    generated = {}
    for key, clicked, unclicked in rows:
        items = table[key]
        assert not set(items) & set(unclicked), key      # never a known negative
        if clicked:                                       # clicks, most clicked first
            assert items == sorted(clicked, key=lambda i: (-clicked[i], i))
        else:
            assert len(items) == len(set(items)) == 5 and set(items) <= space
            generated[key] = items
    return generated


def test_table_rules_on_the_planted_data(planted, augmented):
    _, rows = planted
    out, summary = augmented
    table = positives.load(out, "diffusion", out)[0]
    space = {i for _, c, u in rows for i in [*c, *u]}
    on_topic = []
    for key, items in check_table_rules(table, rows).items():
        topic = int(key.split("_")[0]) - 1
        on_topic.append(sum(1000 + 100 * topic <= i < 1100 + 100 * topic for i in items))
    # A click-less query showed 6 of its topic's 10 items, so at most 4 of its 5 generated items
    # can be on topic; 5 random picks among the other 74 items would hold 0.3 on average
    # (measured: 2.2).
    print("generated items on topic per click-less query:", np.mean(on_topic))
    assert np.mean(on_topic) >= 1.5
    clickless = sum(1 for _, c, _ in rows if not c)
    assert summary["queries"]["total"] == TOPICS * QUERIES_PER_TOPIC
    assert summary["queries"]["clickless"] == summary["queries"]["clickless_filled"] == clickless
    assert summary["queries"]["clicked_augmented"] == 0
    assert summary["item_space"]["items_in_space"] == len(space)
    assert summary["memory"]["peak_rss_mb"] > 100
    assert summary["training"]["epochs_run"] == EPOCHS
    assert not os.path.exists(os.path.join(out, augment.CHECKPOINT_DIR))


def test_augment_clicked_fills_sparse_queries_up_to_k(planted, augmented, tmp_path):
    data_dir, rows = planted
    summary = augment.run(augment.load_augment_config(None, [*TINY, "train.epochs=1",
                                                             "output.augment_clicked=true"]),
                    data_dir, str(tmp_path), verbose=0)
    table = positives.load(data_dir, "diffusion", str(tmp_path))[0]
    for key, clicked, unclicked in rows:
        ranked = sorted(clicked, key=lambda i: (-clicked[i], i))
        assert table[key][:len(clicked)] == ranked
        assert len(table[key]) == 5 and not set(table[key]) & set(unclicked)
    assert summary["queries"]["clicked_augmented"] == sum(1 for _, c, _ in rows if c)


class StopAfterEpoch(keras.callbacks.Callback):
    """Records the epoch losses and simulates a kill after epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.losses = epoch, []

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(logs["loss"])
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


def test_same_seed_same_run_also_after_a_kill_and_resume(planted, augmented, tmp_path):
    data_dir, _ = planted
    out, summary = augmented
    config = augment.load_augment_config(None, [*TINY, "train.checkpoint_seconds=0"])
    killer = StopAfterEpoch(10)
    with pytest.raises(KeyboardInterrupt):
        augment.run(config, data_dir, str(tmp_path / "killed"), verbose=0, extra_callbacks=[killer])
    assert killer.losses == summary["training"]["loss"][:11]     # same seed, same steps
    assert os.path.exists(tmp_path / "killed" / augment.CHECKPOINT_DIR)
    resumed = augment.run(config, data_dir, str(tmp_path / "killed"), verbose=0)
    assert resumed["training"]["epochs_run"] == EPOCHS - 11
    assert resumed["training"]["loss"] == summary["training"]["loss"][11:]
    assert resumed["quality"] == summary["quality"]
    assert (positives.load(data_dir, "diffusion", str(tmp_path / "killed"))
            == positives.load(data_dir, "diffusion", out))
    other_config = augment.load_augment_config(None, [*TINY, "train.seed=1", "train.epochs=2"])
    other = augment.run(other_config, data_dir, str(tmp_path / "other"), verbose=0)
    assert other["training"]["loss"] != summary["training"]["loss"][:2]


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--set", "model.hiden_units=[4]"], "unknown model key(s) ['hiden_units']"),
    (["--set", "train.epochs=many"], "train.epochs must be an integer"),
    (["--set", "data.positive_value=-1"], "need data.negative_value < data.neutral_value"),
    (["--set", "epochs=3"], "--set expects section.key=value"),
    (["--set", "fit.epochs=3"], "unknown augment config section(s) ['fit']"),
    (["--config", "nope.yaml"], "config file nope.yaml not found"),
])
def test_config_errors_are_usage_errors(args, message, planted, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        augment.main(["--data", planted[0], "--output", str(tmp_path), *args])
    error = capsys.readouterr().err
    assert info.value.code == 2 and f"python -m qrec_tf.augment: error: {message}" in error
    assert "Traceback" not in error


def test_data_errors_are_usage_errors(tmp_path, capsys):
    def fails(data_dir, message, *extra):
        with pytest.raises(SystemExit) as info:
            augment.main(["--data", str(data_dir), "--output", str(tmp_path / "out"), *extra])
        assert info.value.code == 2 and message in capsys.readouterr().err

    fails(tmp_path / "missing", "no query table at")
    no_vocab = write_data(tmp_path / "no_vocab", [("1", {5: 1}, [6])], [5, 6])
    os.remove(S.vocab_path(no_vocab, S.VOCAB_ITEMS))
    fails(no_vocab, "vocab/items.txt not found")
    fails(write_data(tmp_path / "no_clicks", [("1", {}, [5, 6]), ("2", {}, [6])], [5, 6]),
          "no query has a clicked item inside the item space")
    # Every query has a click: only a forced run trains (and needs items in the vocabulary).
    fails(write_data(tmp_path / "unknown_items", [("1", {5: 1}, [6])], [7]),
          "is in the item vocabulary", "--force")


# --- only useful work ---------------------------------------------------------------------------
def test_queries_to_fill_by_hand():
    clicks = np.array([0, 3, 1, 0, 12])
    output = augment.AugmentOutputConfig(top_k=3)
    assert augment.queries_to_fill(clicks, output).tolist() == [0, 3]
    output.augment_clicked = True            # also those with fewer than top_k = 3 clicks
    assert augment.queries_to_fill(clicks, output).tolist() == [0, 2, 3]
    assert augment.queries_to_fill(np.array([3, 4]), output).tolist() == []


def test_no_query_to_fill_by_hand_trains_nothing(tmp_path, capsys):
    data_dir = write_data(tmp_path / "data", [("1_1", {5: 1, 6: 2}, [7]), ("2_1", {7: 1}, [5]),
                                              ("2_2", {8: 1}, [])], [5, 6, 7])
    out = str(tmp_path / "out")
    assert augment.main(["--data", data_dir, "--output", out, "--verbose", "0"]) == 0
    assert "no query needs filling (no click-less query, output.augment_clicked off)" in \
        capsys.readouterr().out
    # most clicked first; item 8 is outside the item vocabulary and stays, as in the log
    assert positives.load(data_dir, "diffusion", out)[0] == {"1_1": [6, 5], "2_1": [7],
                                                             "2_2": [8]}
    assert sorted(os.listdir(out)) == sorted([augment.CONFIG_FILE, augment.SUMMARY_FILE,
                                              positives.POSITIVES_DIR])


@pytest.mark.slow
def test_no_query_to_fill_writes_the_log_positives_without_training(tmp_path, capsys, caplog):
    """A generated log in which every search session has a click, so every query has one."""
    from pipelines import build_tfrecords, synthetic

    regime = dataclasses.replace(synthetic.REGIMES["default"], no_click_session_prob=0.0)
    synthetic.generate(str(tmp_path / "log"), users=40, items=300, seed=5, rec_per_user=4,
                       sessions_per_user=3, regime=regime)
    data_dir = str(tmp_path / "data")
    build_tfrecords.run(["--input", str(tmp_path / "log"), "--output", data_dir,
                         "--direct_running_mode=in_memory"])
    log = positives.log_positives(data_dir)
    assert len(log) > 20 and all(log.values())         # every query has a click
    tiny = [arg for s in ["model.hidden_units=[8]", "train.epochs=1", "train.batch_size=16"]
            for arg in ("--set", s)]

    out = str(tmp_path / "out")
    caplog.set_level(logging.INFO, "qrec_tf.augment")
    assert augment.main(["--data", data_dir, "--output", out, "--verbose", "0", *tiny]) == 0
    assert "no query needs filling" in capsys.readouterr().out
    assert f"0 of {len(log)} queries to fill: 0 click-less" in caplog.text
    with open(os.path.join(out, augment.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["trained"] is False and summary["training"] is None
    assert summary["queries"]["total"] == len(log) and summary["queries"]["to_fill"] == 0
    assert positives.load(data_dir, "diffusion", out)[0] == log
    for trained_output in (augment.WEIGHTS_FILE, augment.CHECKPOINT_DIR):
        assert not os.path.exists(os.path.join(out, trained_output))

    forced = str(tmp_path / "forced")
    assert augment.main(["--data", data_dir, "--output", forced, "--verbose", "0", "--force",
                         *tiny]) == 0
    with open(os.path.join(forced, augment.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["trained"] is True and summary["training"]["epochs_run"] == 1
    assert summary["quality"]["queries"] > 0 and summary["quality"]["diffusion"] is not None
    assert os.path.exists(os.path.join(forced, augment.WEIGHTS_FILE))
    assert positives.load(data_dir, "diffusion", forced)[0] == log   # nothing to fill


# --- end to end ----------------------------------------------------------------------------------
def test_din_con_diffusion_reads_the_table_of_the_pipeline_output(tmp_path):
    from pipelines import build_tfrecords, synthetic
    from qrec_tf.config import load_config
    from qrec_tf.models.registry import build_model

    synthetic.generate(str(tmp_path / "log"), users=60, items=300, seed=3, rec_per_user=8,
                       sessions_per_user=3)
    data_dir = str(tmp_path / "data")
    build_tfrecords.run(["--input", str(tmp_path / "log"), "--output", data_dir,
                         "--direct_running_mode=in_memory"])
    out = str(tmp_path / "augment")
    config = augment.load_augment_config(None, ["model.hidden_units=[16]", "train.epochs=2"])
    summary = augment.run(config, data_dir, out, verbose=0)
    queries = summary["queries"]
    assert queries["clickless"] > 10 and queries["clickless_filled"] == queries["clickless"]
    assert not os.path.exists(os.path.join(data_dir, positives.POSITIVES_DIR))

    def rows_with_positives(name, *extra):
        config = load_config(f"configs/{name}.yaml", ["model.embedding_dim=4",
                                                      "model.mlp_units=[4]",
                                                      "model.attention_units=[4]", *extra])
        table = build_model(config.model, data_dir).tasks[-1].query_positives.numpy()
        return int((table[2:, 0] != 0).sum())

    with_log = rows_with_positives("din_con")
    with_diffusion = rows_with_positives("din_con_diffusion", f"model.positives_dir={out}")
    # every query has a row now: the click-less ones gained their generated items
    assert with_log == queries["with_clicks"]
    assert with_diffusion == queries["total"]


def test_the_shipped_config_is_the_default():
    assert augment.load_augment_config("configs/augment/default.yaml") == augment.AugmentConfig()
