"""benchmarks.peers without DeepCTR: the TFRecord -> DeepCTR arrays export, the FLOP count, the
order of the timed runs and the report."""

import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import peers, step_flops
from benchmarks.step_timer import median_after_warmup
from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.layers.id_lookup import make_lookup

SCHEMA = S.Schema(history_length=3, max_queries=1, max_query_words=1, nip_positives=1,
                  nip_negatives=1, query_clicked_items=1)
# Indices: 0 padding, 1 OOV, then the vocabulary in order.
VALUES = {S.VOCAB_ITEMS: [100, 200], S.VOCAB_CATEGORIES: [7], S.VOCAB_SUBCATEGORIES: [70, 71],
          S.VOCAB_USERS: [5], S.VOCAB_AUTHORS: [9], S.VOCAB_SEARCH_ACTIVE_LEVELS: [1],
          S.VOCAB_REC_ACTIVE_LEVELS: [1], S.VOCAB_ONEHOT_FEAT1: [1], S.VOCAB_ONEHOT_FEAT2: [1],
          S.VOCAB_QUERIES: ["a"], S.VOCAB_WORDS: [1]}


def lookups():
    dtypes = {f.vocab: f.dtype for f in SCHEMA.features if f.vocab}
    return {v: make_lookup(VALUES[v], dtypes[v], f"lookup_{v}") for v in dtypes}


def example(row: int, label: int) -> dict:
    """Row r: item 200 (or an unknown 300 on row 2), history [pad, 100, 200]."""
    values = {f.name: [f.pad] * f.size if f.shape else f.pad for f in SCHEMA.features}
    values.update({S.LABEL: label, S.TIMESTAMP: row, S.DOMAIN: 0, S.USER_ID: 5,
                   S.ITEM_ID: 300 if row == 2 else 200, S.CATEGORY_ID: 7,
                   S.SUBCATEGORY_ID: 71, S.AUTHOR_ID: 9,
                   S.HIST_ITEM_IDS: [-1, 100, 200], S.HIST_CATEGORY_IDS: [-1, 7, 7],
                   S.HIST_SUBCATEGORY_IDS: [-1, 70, 71]})
    return values


def test_deepctr_names_put_hist_before_the_target_feature_name():
    names = [peers.deepctr_name(n) for n in peers.deepctr_features(SCHEMA)]
    assert names == ["user_id", "search_active_level", "rec_active_level", "onehot_feat1",
                     "onehot_feat2", "item_id", "author_id", "category_id", "subcategory_id",
                     "hist_item_id", "hist_category_id", "hist_subcategory_id"]


def test_a_split_is_exported_in_file_order_as_our_lookups_indices(tmp_path):
    os.makedirs(tmp_path / "test")
    with tf.io.TFRecordWriter(str(tmp_path / "test" / "part-00000.tfrecord.gz"),
                              options=S.COMPRESSION) as writer:
        for row, label in enumerate([1, 0, 1]):
            writer.write(SCHEMA.to_example(example(row, label)))
    # Batches of 2: the three rows come from two batches, concatenated in order.
    columns = peers.read_split_as_deepctr(str(tmp_path), "test", SCHEMA, lookups(), batch_size=2)
    assert columns["label"].tolist() == [1, 0, 1]
    assert columns["item_id"].tolist() == [3, 3, 1]           # 200 -> 3; unknown 300 -> OOV 1
    assert columns["item_id"].dtype == np.int32
    assert columns["hist_item_id"].tolist() == [[0, 2, 3]] * 3    # padding -> 0 (DeepCTR's mask)
    assert columns["hist_subcategory_id"].tolist() == [[0, 2, 3]] * 3
    assert columns["user_id"].tolist() == [2, 2, 2]
    assert set(columns) == {"label", *[peers.deepctr_name(n)
                                       for n in peers.deepctr_features(SCHEMA)]}


def test_din_step_flops_by_hand():
    shape = step_flops.DinShape(batch=2, history=3, item_dim=4, attention_units=(5,),
                                mlp_units=(6,), mlp_input=7)
    # blockwise first layer: 3 * 2 * (2*4*5) + 2*4*5 = 280; score: 3 * 2*5*1 = 30;
    # pooling: 2*3*4 = 24; MLP 7 -> 6 -> 1: 84 + 12 = 96. Forward 430; step 3 * 2 * 430.
    assert step_flops.din_step_flops(shape) == 2580
    # concatenated first layer: 3 * 2*16*5 = 480; forward 630.
    assert step_flops.din_step_flops(shape, blockwise=False) == 3780


def test_din_step_flops_of_the_real_positions_by_hand():
    """scored_history 1 of 3 (a packed attention on rows with one real position each): the
    attention's MLP on 2 rows instead of 6; the weighted sum still over every position."""
    shape = step_flops.DinShape(batch=2, history=3, item_dim=4, attention_units=(5,),
                                mlp_units=(6,), mlp_input=7, scored_history=1.0)
    # first layer 1 * 80 + 40 = 120; score 1 * 10; pooling 24; MLP 96. Forward 250 per example.
    assert step_flops.din_step_flops(shape) == 3 * 2 * 250


def test_din_shape_of_the_shipped_config():
    shape = step_flops.din_shape(load_config("configs/din.yaml").model, S.Schema(), 1024)
    # The MLP reads 5 user-group and the author embeddings (16 each), target and pooled history
    # (48 each).
    assert shape == step_flops.DinShape(1024, 50, 48, (80, 40), (200, 80), 6 * 16 + 2 * 48)


def test_runs_take_turns_abba():
    assert peers.turns(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]


def test_report_ratio_examples_per_second_and_auc():
    ours = peers.Contender("configs/din.yaml", [[9.0, 0.1, 0.1], [9.0, 0.1, 0.3]])
    peer = peers.Contender(peers.DEEPCTR, [[9.0, 0.2, 0.2], [9.0, 0.2, 0.2]])
    labels = np.array([0, 1, 0, 1])
    ours.fit = {"test_probabilities": [0.1, 0.9, 0.2, 0.8], "val_auc": [0.7, 0.8, 0.75]}
    peer.fit = {"test_probabilities": [0.6, 0.9, 0.2, 0.5], "val_auc": [0.6, 0.65]}
    args = type("Args", (), dict(batch_size=1024, warmup=1, repetitions=2, steps=2, epochs=3,
                                 patience=1))
    text = peers.report([ours, peer], args, {"configs/din.yaml": 1.0}, 20.0, labels)
    lines = text.splitlines()
    # Ours: median of 0.1, 0.1, 0.1, 0.3 = 0.1 s -> 10,240 examples/s, 2x DeepCTR's 0.2 s;
    # 1 GFLOP in 0.1 s = 10 GFLOP/s, half the 20 GFLOP/s matmul.
    assert lines[2].split() == ["qrec_tf", "din", "100.0", "100,", "200", "10,240", "2.00",
                                "10.0", "50%"]
    assert lines[3].split()[:6] == ["DeepCTR", "DIN", "200.0", "200,", "200", "5,120"]
    assert "test AUC 1.0000   epochs run 3, best 2 (val AUC 0.8000)" in lines[5]
    assert "test AUC 0.7500   epochs run 2, best 2 (val AUC 0.6500)" in lines[6]
    assert "AUC difference +0.2500" in lines[7]


def test_median_after_warmup_needs_timed_steps():
    assert median_after_warmup([5.0, 1.0, 3.0, 2.0], 1) == 2.0
    with pytest.raises(ValueError, match="none after 2 warm-up"):
        median_after_warmup([5.0, 1.0], 2)


def test_a_side_venv_with_a_matching_stamp_is_reused(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    (tmp_path / ".installed").write_text("\n".join(peers.SIDE_PACKAGES))
    monkeypatch.setattr(peers.subprocess, "run", lambda *a, **k: pytest.fail("installed again"))
    assert peers.ensure_side_venv(tmp_path) == tmp_path / "bin" / "python"
