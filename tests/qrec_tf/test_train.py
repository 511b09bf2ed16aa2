"""Training and evaluation end to end on a small generated log: losses fall, every model of the
registry trains, a killed run resumes, evaluate matches a brute-force computation."""

import json
import os

import keras
import numpy as np
import pytest

from benchmarks import query_diagnostics
from qrec_tf import evaluate, metrics, train
from qrec_tf.config import load_config, reads_key
from qrec_tf.models.registry import MODELS

TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=128", "train.shuffle_buffer=2000"]


def config(name, *extra):
    return load_config(f"configs/{name}.yaml", [*(o for o in TINY if reads_key(name, o)), *extra])


@pytest.mark.parametrize("name", ["din", "din_query", "din_nip", "din_con", "queryrec", "dcn",
                                  pytest.param("ple", marks=pytest.mark.slow),
                                  pytest.param("sesrec", marks=pytest.mark.slow), "iv4rec"])
def test_every_model_trains_and_its_losses_fall(name, data_dir, tmp_path):
    summary = train.train(config(name, "train.epochs=3", "train.early_stopping_patience=5"),
                          data_dir, str(tmp_path / name), verbose=0)
    history = summary["history"]
    assert summary["epochs_run"] == 3
    assert history["loss"][-1] < history["loss"][0]
    assert history["ctr_loss"][-1] < history["ctr_loss"][0]
    cfg = MODELS[name][1]
    if name in ("din_nip", "queryrec"):
        assert history["nip_loss"][-1] < history["nip_loss"][0]
    if name in ("din_con", "queryrec"):
        assert history["contrastive_loss"][-1] < history["contrastive_loss"][0]
        assert "nip_loss" not in history or name == "queryrec"
    for aux in {"ple": ["search_ctr_loss"], "sesrec": ["alignment_loss", "triplet_loss"]}.get(
            name, []):
        assert history[aux][-1] < history[aux][0], aux
        assert "val_" + aux not in history         # training-only terms
    if name == "iv4rec":
        # The first-stage targets are the embeddings being learned, so these losses need not
        # fall here; tests/qrec_tf/layers/test_instrumental.py checks that stage 1 learns.
        assert all(history[aux][-1] > 0 for aux in ("iv_item_loss", "iv_user_loss"))
    assert all(np.isfinite(v).all() for v in history.values())
    for path in ("config.yaml", "model.weights.h5", "run.json", "tensorboard"):
        assert os.path.exists(tmp_path / name / path), path
    assert not os.path.exists(tmp_path / name / "backup")  # removed after a finished run
    assert cfg is not None


class StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


class RecordWeights(keras.callbacks.Callback):
    """Each finished epoch's validation AUC and trainable weights (what a checkpoint saves)."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def on_epoch_end(self, epoch, logs=None):
        self.record[epoch] = (logs["val_auc"], [v.numpy() for v in self.model.trainable_variables])


def test_a_killed_run_resumes_from_its_last_finished_epoch(data_dir, tmp_path):
    cfg = config("din", "train.epochs=4", "train.early_stopping_patience=5")
    record = {}
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, data_dir, str(tmp_path), verbose=0,
                    extra_callbacks=[RecordWeights(record), StopAfterEpoch(1)])
    assert os.path.exists(tmp_path / "backup")
    seen = RecordEpochs()
    summary = train.train(cfg, data_dir, str(tmp_path), verbose=0,
                          extra_callbacks=[seen, RecordWeights(record)])
    assert seen.epochs == [2, 3]  # epochs 0 and 1 were done before the kill
    # run.json covers the whole run, the epochs before the kill included.
    assert sorted(record) == [0, 1, 2, 3]
    assert summary["epochs_run"] == 4
    aucs = [record[e][0] for e in range(4)]
    np.testing.assert_allclose(summary["history"]["val_auc"], aucs, rtol=1e-6)
    assert all(len(values) == 4 for values in summary["history"].values())
    assert len(summary["examples_per_second"]) == 4
    best = int(np.argmax(aucs))
    assert summary["best_epoch"] == best + 1
    assert summary["best_val_auc"] == pytest.approx(aucs[best])
    assert json.load(open(tmp_path / "run.json")) == summary
    # The weights kept are that epoch's.
    _, kept = evaluate.load_trained_model(str(tmp_path), data_dir)
    for got, want in zip([v.numpy() for v in kept.trainable_variables], record[best][1]):
        np.testing.assert_array_equal(got, want)


def test_a_resumed_run_keeps_the_best_weights_from_before_the_kill(data_dir, tmp_path):
    """The best validation AUC was before the kill: the resumed run must not replace those
    weights with a worse epoch's (its checkpoint used to start from scratch)."""
    cfg = config("din", "train.epochs=3", "train.early_stopping_patience=5")
    record = {}
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, data_dir, str(tmp_path), verbose=0,
                    extra_callbacks=[RecordWeights(record), StopAfterEpoch(0)])
    history = json.load(open(tmp_path / "backup" / "history.json"))
    history[0]["val_auc"] = 2.0  # no later epoch can beat it
    json.dump(history, open(tmp_path / "backup" / "history.json", "w"))
    summary = train.train(cfg, data_dir, str(tmp_path), verbose=0,
                          extra_callbacks=[RecordWeights(record)])
    assert summary["best_epoch"] == 1 and summary["best_val_auc"] == 2.0
    assert summary["epochs_run"] == 3
    _, kept = evaluate.load_trained_model(str(tmp_path), data_dir)
    for got, want in zip([v.numpy() for v in kept.trainable_variables], record[0][1]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("split", ["test", "train"])
def test_evaluate_matches_brute_force_metrics(split, data_dir, tmp_path):
    train.train(config("din", "train.epochs=1"), data_dir, str(tmp_path), verbose=0)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--model-dir", str(tmp_path), "--data", data_dir, "--split", split,
                          "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    _, model = evaluate.load_trained_model(str(tmp_path), data_dir)
    predictions = evaluate.predict(model, data_dir, split)
    users, labels, probs = (predictions[k] for k in ("user_id", "label", "probability"))
    assert result["n"] == len(labels) == json.load(open(os.path.join(data_dir, "stats.json")))[
        "examples"][split]["count"]
    pos, neg = probs[labels == 1], probs[labels == 0]
    brute = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        len(pos) * len(neg))
    assert result["auc"] == pytest.approx(brute, abs=1e-9)
    if split == "test":  # leave-one-out: one impression per user, so no user has both classes
        assert result["gauc"] is None and result["gauc_users"] == 0
        # The search-signal ceiling scores the same test rows in the same order.
        ceiling = query_diagnostics.signal_ceiling(
            os.path.join(os.path.dirname(data_dir), "log"), data_dir, str(tmp_path),
            resamples=50)
        assert ceiling["test_rows"] == result["n"]
        assert ceiling["auc_model"] == round(result["auc"], 4)
        assert ceiling["difference"]["difference"] == pytest.approx(
            ceiling["auc_model_and_flag"] - ceiling["auc_model"], abs=2e-4)
        assert 0 < ceiling["flag_share"] < 1
    else:
        assert result["gauc_users"] > 100
        assert result["gauc"] == pytest.approx(metrics.gauc(users, labels, probs)[0])
    assert result["logloss"] == pytest.approx(metrics.logloss(labels, probs), rel=1e-6)


def test_cli_errors_are_messages(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--config", "configs/din.yaml", "--data", data_dir, "--model-dir",
                    str(tmp_path), "--set", "model.embeding_dim=8"])
    assert info.value.code == 2 and "is not a key of model" in capsys.readouterr().err
    assert train.main(["--config", "configs/din.yaml", "--data", str(tmp_path / "nope"),
                       "--model-dir", str(tmp_path / "m")]) == 2
    assert "schema.json" in capsys.readouterr().err
    assert evaluate.main(["--model-dir", str(tmp_path / "none"), "--data", data_dir]) == 2
    assert "finished `python -m qrec_tf.train` run" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["queryrec", "iv4rec"])
def test_build_model_creates_every_variable_without_reading_a_split(name, data_dir, tmp_path):
    """build_model creates the variables from the schema's specs: a data directory without its
    splits (vocabularies, query_items and schema only) is enough, and a real batch afterwards
    creates no further variable."""
    import shutil

    from qrec_tf.data import make_dataset
    from qrec_tf.models.registry import build_model

    bare = tmp_path / "bare"
    shutil.copytree(data_dir, bare, ignore=shutil.ignore_patterns(
        "train", "valid", "test", "search_train"))
    model = build_model(config(name).model, str(bare))
    created = [v.path for v in model.weights]
    assert len(created) > 10
    model(next(iter(make_dataset(data_dir, "valid", 4, shuffle=False))), training=False)
    assert [v.path for v in model.weights] == created


def test_item_popularity_is_the_training_count_of_each_row_item(data_dir):
    from qrec_tf import schema as S

    rows = S.read_vocab(data_dir, S.VOCAB_ITEMS)
    (top, top_count), (last, last_count) = rows[0], rows[-1]
    unseen = max(int(value) for value, _ in rows) + 1
    scores = evaluate.item_popularity(data_dir, np.array([int(last), unseen, int(top)]))
    np.testing.assert_array_equal(scores, [last_count, 0, top_count])
    assert top_count > 0
