"""Latent diffusion in the augment stage (model.latent): item groups by category and by hash,
the memory formula by hand, the stage end to end on the planted data (a table the reader
loads, better than popularity, deterministic, resumable), and the dense path unchanged."""

import logging
import os

import numpy as np
import pytest

from qrec_tf import augment, positives
from qrec_tf import schema as S
from tests.qrec_tf.test_augment import (
    QUERIES_PER_TOPIC,
    TINY,
    TOPICS,
    StopAfterEpoch,
    check_table_rules,
    planted_rows,
    write_data,
)

LATENT = [*TINY, "model.latent=true", "model.latent_dim=8", "train.epochs=20"]


def python_hash(item_id, groups):
    """The hash, independently in Python integers: Knuth's multiplicative hash mod 2^64, high
    32 bits, mod groups."""
    return ((item_id * 0x9E3779B97F4A7C15) % 2 ** 64 >> 32) % groups


# --- grouping ------------------------------------------------------------------------------------
def test_groups_by_category_then_hash_by_hand():
    item_ids = np.array([10, 11, 12, 13, 14, 15, 16])
    categories = np.array([7, 3, 7, -1, 3, -1, 0])
    hashes = [python_hash(13, 4), python_hash(15, 4)]
    groups = augment.group_items(item_ids, categories, hash_group_count=4)
    # categories 0, 3, 7 -> groups 0, 1, 2; the hashed items after them, empty hash groups dropped
    used = sorted(set(hashes))
    hashed = [3 + used.index(h) for h in hashes]
    assert groups.group_of_column.tolist() == [2, 1, 2, hashed[0], 1, hashed[1], 0]
    assert groups.names == ["category 0", "category 3", "category 7",
                            *[f"hash {h}" for h in used]]
    assert groups.sizes == [1, 2, 2, *[hashes.count(h) for h in used]]
    # group order: columns of group 0, then 1, ... (column order within a group)
    by_group = sorted(range(7), key=lambda c: (groups.group_of_column[c], c))
    assert groups.column_of_row.tolist() == by_group
    assert groups.row_of_column[groups.column_of_row].tolist() == list(range(7))
    assert groups.report() == {"groups": len(groups.names), "category_groups": 3,
                               "kmeans_groups": 0, "hash_groups": len(used),
                               "items_by_category": 5, "items_by_kmeans": 0,
                               "items_hashed": 2, "largest_group": 2, "smallest_group": 1}


def test_kmeans_finds_planted_clusters_and_is_deterministic():
    """Three tight clusters far apart: k-means with 3 clusters puts each one in its own group,
    the same labels for the same seed; more clusters than rows gives one per row."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), [40, 25, 35])
    vectors = centres[truth] + rng.normal(scale=0.3, size=(100, 2))
    labels = augment.kmeans(vectors, 3, seed=1)
    # one label per planted cluster, each cluster all one label
    assert len(set(labels)) == 3
    assert all(len(set(labels[truth == t])) == 1 for t in range(3))
    assert augment.kmeans(vectors, 3, seed=1).tolist() == labels.tolist()
    assert sorted(augment.kmeans(vectors[:2], 5).tolist()) == [0, 1]
    assert augment.kmeans(np.zeros((0, 2)), 3).shape == (0,)


def test_items_without_category_grouped_by_kmeans_where_embedded_else_hashed():
    """Categories first; the uncategorised items with an embedding by k-means (two clusters of
    two), the one without (NaN row) hashed."""
    item_ids = np.array([10, 11, 12, 13, 14, 15])
    categories = np.array([4, -1, -1, -1, -1, -1])
    embeddings = np.array([[9.0, 9.0], [0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0],
                           [np.nan, np.nan]])
    groups = augment.group_items(item_ids, categories, 2, embeddings)
    g = groups.group_of_column.tolist()
    assert groups.names[0] == "category 4" and g[0] == 0
    assert g[1] == g[2] and g[3] == g[4] and g[1] != g[3]
    assert {groups.names[g[1]], groups.names[g[3]]} == {"kmeans 0", "kmeans 1"}
    assert groups.names[g[5]] == f"hash {python_hash(15, 2)}" and g[5] == 3
    report = groups.report()
    assert (report["kmeans_groups"], report["items_by_kmeans"], report["items_hashed"]) == (
        2, 4, 1)


def test_item_embeddings_read_from_a_trained_ctr_model(monkeypatch):
    """read_item_embeddings: the model's item table row of each id (vocabulary position + 2:
    rows 0 and 1 are padding and OOV), NaN for an id the vocabulary lacks."""
    from types import SimpleNamespace

    from qrec_tf import model_layout
    from qrec_tf.models import registry

    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    item_table = SimpleNamespace(embeddings=SimpleNamespace(numpy=lambda: table))
    model = SimpleNamespace(
        embeddings={S.VOCAB_ITEMS: item_table},
        vocabularies=SimpleNamespace(values={S.VOCAB_ITEMS: [70, 50, 90, 60]}))
    loaded = []
    monkeypatch.setattr(model_layout, "resolve_data_dir", lambda model_dir, data_dir: "data")
    monkeypatch.setattr(registry, "load_trained_model",
                        lambda model_dir, data_dir: loaded.append((model_dir, data_dir))
                        or (None, model))
    read = augment.read_item_embeddings("ctr_model", np.array([90, 12345, 70]))
    assert loaded == [("ctr_model", "data")]
    np.testing.assert_array_equal(read[[0, 2]], table[[4, 2]])
    assert np.isnan(read[1]).all()


def test_read_item_groups_clusters_by_the_ctr_models_embeddings_when_given(tmp_path, monkeypatch,
                                                                            caplog):
    """Without item_categories.tsv and with model.latent_item_embeddings: every item by k-means
    on the model's embeddings (read once), none hashed."""
    from qrec_tf.augment import grouping

    vectors = np.array([[0.0, 0.0], [0.0, 0.1], [8.0, 8.0], [8.0, 8.1]], np.float32)
    read = []
    monkeypatch.setattr(grouping, "read_item_embeddings",
                        lambda model_dir, ids: read.append(model_dir) or vectors)
    caplog.set_level(logging.WARNING, "qrec_tf.augment")
    groups = augment.read_item_groups(str(tmp_path), np.array([5, 6, 7, 8]), 2, "ctr_dir")
    assert read == ["ctr_dir"] and "(k-means)" in caplog.text
    g = groups.group_of_column.tolist()
    assert g[0] == g[1] and g[2] == g[3] and g[0] != g[2]
    assert groups.report()["items_by_kmeans"] == 4 and groups.report()["items_hashed"] == 0


def test_hash_groups_are_fixed_and_spread_ids():
    ids = np.array([0, 1, 2, 12345, 2 ** 40 + 7])
    assert augment.hash_groups(ids, 16).tolist() == [python_hash(int(i), 16) for i in ids]
    # sequential and strided ids (KuaiSAR's are dense ints) fill every group evenly
    for ids in (np.arange(16_000), 100_000 + 50 * np.arange(16_000)):
        counts = np.bincount(augment.hash_groups(ids, 16), minlength=16)
        assert counts.min() >= 800 and counts.max() <= 1200, counts


def test_groups_read_from_item_categories_or_hashed_without_it(tmp_path, caplog):
    data_dir = str(tmp_path)
    with open(os.path.join(data_dir, S.ITEM_CATEGORIES_FILE), "w") as f:
        # item 30 has no first-level category (PAD_ID); item 40 has no row at all
        f.write("10\t5\t51\t7\n20\t2\t21\t7\n30\t-1\t-1\t-1\n99\t5\t52\t8\n")
    groups = augment.read_item_groups(data_dir, np.array([20, 30, 10, 40]), 1)
    assert groups.names == ["category 2", "category 5", "hash 0"]
    assert groups.group_of_column.tolist() == [0, 2, 1, 2]
    # level 2: the second-level categories, finer (item 99's 52 is not in the item space)
    groups = augment.read_item_groups(data_dir, np.array([20, 30, 10, 40]), 1, level=2)
    assert groups.names == ["category 21", "category 51", "hash 0"]
    assert groups.group_of_column.tolist() == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="level must be 1 or 2"):
        augment.read_item_groups(data_dir, np.array([20]), 1, level=3)
    os.remove(os.path.join(data_dir, S.ITEM_CATEGORIES_FILE))
    caplog.set_level(logging.WARNING, "qrec_tf.augment")
    groups = augment.read_item_groups(data_dir, np.array([20, 30, 10, 40]), 3)
    assert "grouping all 4 items without categories into at most 3 latent groups (hashing)" \
        in caplog.text
    assert groups.report()["items_hashed"] == 4
    assert groups.group_of_column.tolist() == [
        sorted(set(python_hash(i, 3) for i in (20, 30, 10, 40))).index(python_hash(i, 3))
        for i in (20, 30, 10, 40)]


def test_latent_memory_formula_by_hand():
    config = augment.load_augment_config(None, ["model.latent=true"])
    # N = 2M, 8 groups of d = 16, split signs, H = [256], E = 10, residual
    parts = augment.latent_parameter_count(config.model, 2_000_000, 8)
    assert parts["encoders"] == 2 * 2_000_000 * 16 + 8 * 16
    assert parts["decoders"] == 2_000_000 * 16 + 2_000_000
    assert parts["skip"] == 2 * 2_000_000
    # the denoiser on L = 128 inputs: (128 + 10 + 1) 256 + (256 + 1) 128 + (10 + 1) 10 + 2 x 128
    assert parts["denoiser"] == 139 * 256 + 257 * 128 + 110 + 256
    estimate = augment.latent_memory_estimate_mb(config, 2_000_000, 8, 0, 0)
    params = sum(parts.values())
    assert estimate["parameters"] == params and estimate["latent_width"] == 128
    dense_gradients = 4 * (2_000_000 * 17 + parts["denoiser"])
    assert estimate["training_state_mb"] == round((12 * params + dense_gradients) / 2 ** 20, 1)
    # generation: 4 N float32 per query, 1 GiB -> 33 queries at N = 2M
    assert estimate["generation_batch"] == 2 ** 30 // (16 * 2_000_000) == 33
    assert estimate["training_state_mb"] < 1400    # the docstring's 1.2 GB + 0.14 GB


# --- the stage -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_with_categories(tmp_path_factory):
    """The planted data of test_augment, its topics as first-level categories (topic + 1)."""
    rows = planted_rows()
    vocabulary = sorted({i for _, c, u in rows for i in [*c, *u]})
    data_dir = write_data(tmp_path_factory.mktemp("latent"), rows, vocabulary)
    with open(os.path.join(data_dir, S.ITEM_CATEGORIES_FILE), "w") as f:
        f.writelines(f"{i}\t{(i - 1000) // 100 + 1}\t{i}\t-1\n" for i in vocabulary)
    return data_dir, rows


@pytest.fixture(scope="module")
def latent_run(planted_with_categories, tmp_path_factory):
    data_dir, _ = planted_with_categories
    out = str(tmp_path_factory.mktemp("latent_out"))
    summary = augment.run(augment.load_augment_config(None, LATENT), data_dir, out, verbose=0)
    return out, summary


def test_latent_stage_groups_by_category_and_beats_popularity(latent_run):
    _, summary = latent_run
    assert summary["latent_groups"] == {
        "groups": TOPICS, "category_groups": TOPICS, "kmeans_groups": 0, "hash_groups": 0,
        "items_by_category": 80, "items_by_kmeans": 0, "items_hashed": 0, "largest_group": 10,
        "smallest_group": 10}
    estimate = summary["memory"]["estimate"]
    assert estimate["latent_width"] == TOPICS * 8
    assert estimate["parameters"] == sum(augment.latent_parameter_count(
        augment.load_augment_config(None, LATENT).model, 80, TOPICS).values())
    quality = summary["quality"]
    # measured (seeds 0-2): Recall@5 0.54-0.69, NDCG@5 0.37-0.51; popularity 0-0.15, 0-0.08
    assert quality["diffusion"]["recall"] >= quality["popularity"]["recall"] + 0.2, quality
    assert quality["diffusion"]["ndcg"] >= quality["popularity"]["ndcg"] + 0.15, quality
    assert summary["memory"]["peak_rss_mb"] > 100


def test_latent_table_is_read_by_the_positives_reader(planted_with_categories, latent_run):
    data_dir, rows = planted_with_categories
    out, summary = latent_run
    check_table_rules(positives.load(data_dir, "diffusion", out)[0], rows)
    clickless = sum(1 for _, c, _ in rows if not c)
    assert summary["queries"]["clickless_filled"] == clickless
    assert summary["queries"]["total"] == TOPICS * QUERIES_PER_TOPIC


@pytest.mark.slow
def test_latent_run_is_deterministic_and_resumes(planted_with_categories, latent_run, tmp_path):
    data_dir, _ = planted_with_categories
    out, summary = latent_run
    config = augment.load_augment_config(None, [*LATENT, "train.checkpoint_seconds=0"])
    killer = StopAfterEpoch(4)
    with pytest.raises(KeyboardInterrupt):
        augment.run(config, data_dir, str(tmp_path / "killed"), verbose=0,
                    extra_callbacks=[killer])
    assert killer.losses == summary["training"]["loss"][:5]
    resumed = augment.run(config, data_dir, str(tmp_path / "killed"), verbose=0)
    assert resumed["training"]["loss"] == summary["training"]["loss"][5:]
    assert resumed["quality"] == summary["quality"]
    assert (positives.load(data_dir, "diffusion", str(tmp_path / "killed"))
            == positives.load(data_dir, "diffusion", out))


def test_latent_false_is_the_dense_path(planted_with_categories, tmp_path):
    """The default config trains the dense denoiser over the capped item space, whatever
    item_categories.tsv holds: no groups, the dense memory estimate."""
    data_dir, _ = planted_with_categories
    config = augment.load_augment_config(None, [*TINY, "train.epochs=1"])
    assert config.model.latent is False
    summary = augment.run(config, data_dir, str(tmp_path), verbose=0)
    assert summary["latent_groups"] is None
    assert summary["memory"]["estimate"]["parameters"] == augment.parameter_count(
        config.model, 80)
    assert "latent_width" not in summary["memory"]["estimate"]


def test_latent_config_errors():
    with pytest.raises(ValueError, match="model.latent_dim and model.latent_hash_groups"):
        augment.load_augment_config(None, ["model.latent_dim=0"])
    with pytest.raises(ValueError, match="model.latent_category_level must be 1"):
        augment.load_augment_config(None, ["model.latent_category_level=0"])
