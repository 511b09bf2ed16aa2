"""Training, evaluation and export never take bad settings or bad data silently (issue 31, items 6
and 7): non-finite config numbers, a non-finite loss, NaN weights, malformed --set values, bad
paths, truncated or corrupt TFRecord shards. Each test fails on the code before issue 31."""

import glob
import os
import shutil

import keras
import numpy as np
import pytest

from qrec_tf import evaluate, export, model_layout, train
from qrec_tf.config import load_config
from qrec_tf.evaluate import load_trained_model
from tests.qrec_tf.test_train import TINY, config

ONE_STEP = ["train.epochs=1", "train.steps_per_epoch=1", "train.validation_steps=1"]


# --- 6 and 7: config values -------------------------------------------------------------------
def test_exponent_floats_are_accepted():
    """PyYAML reads `1e-3` as a string; the config docstring offers it."""
    assert load_config("configs/din.yaml", ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    assert load_config("configs/din.yaml", ["model.dropout=5E-1"]).model.dropout == 0.5


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=.nan", "train.learning_rate must be a finite number, got nan"),
    ("train.learning_rate=.inf", "train.learning_rate must be a finite number, got inf"),
    ("model.dropout=-.inf", "model.dropout must be a finite number"),
    ("model.din.nip_weight=.nan", "model.din.nip_weight must be a finite"),
    ("model.mlp_units=[1,2", r"--set model.mlp_units=\[1,2: the value is not valid YAML"),
    ("model.sas_heads=0", "model.din.sas_heads and model.din.sas_blocks must be >= 1"),
    ("model.mlp_units=[16, 0]", "model.mlp_units must be a non-empty list of integers >= 1"),
    ("train.shuffle_buffer=-5", "train.shuffle_buffer must be >= 1, got -5"),
    ("train.steps_per_epoch=0", "train.steps_per_epoch must be >= 1 or null"),
    ("train.validation_steps=-1", "train.validation_steps must be >= 1 or null"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience must be >= 0, got -1"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/queryrec.yaml", [override])


def test_a_config_file_with_nan_is_refused(tmp_path):
    path = tmp_path / "din.yaml"
    path.write_text("model:\n  name: din\ntrain:\n  learning_rate: .nan\n")
    with pytest.raises(ValueError, match="train.learning_rate must be a finite number"):
        load_config(str(path))


def test_cli_prints_one_line_for_a_malformed_list(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--config", "configs/din.yaml", "--data", data_dir, "--model-dir",
                    str(tmp_path / "m"), "--set", "model.mlp_units=[1,2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "not valid YAML" in err and "Traceback" not in err


# --- 6: a non-finite loss ----------------------------------------------------------------------
class PoisonWeights(keras.callbacks.Callback):
    """Sets every embedding to NaN before the second step (what a too large learning rate does
    within a few steps)."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            for variable in self.model.weights:
                if "emb" in variable.path:
                    variable.assign(np.full(variable.shape, np.nan, variable.dtype))


def test_a_non_finite_loss_stops_training_and_saves_no_model(data_dir, tmp_path):
    """Issue 31.6: learning_rate .nan trained to NaN weights, reported AUC 0.0, exit 0, saved."""
    model_dir = tmp_path / "m"
    with pytest.raises(train.TrainingDiverged, match=r"the training loss is nan at epoch 1, "
                                                     r"step 2: training stopped"):
        train.train(config("din", "train.epochs=1", "train.steps_per_epoch=4"), data_dir,
                    str(model_dir), verbose=0, extra_callbacks=[PoisonWeights()])
    assert not (model_dir / model_layout.WEIGHTS_FILE).exists()
    assert not (model_dir / model_layout.RUN_FILE).exists()


# --- 7: paths ---------------------------------------------------------------------------------
def test_a_model_dir_that_is_a_file_is_a_one_line_error(data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train.main(["--config", "configs/din.yaml", "--data", data_dir, "--model-dir",
                       str(tmp_path / "file"), *sum((["--set", s] for s in TINY), [])]) == 2
    err = capsys.readouterr().err
    assert f"--model-dir {tmp_path / 'file'} is a file, not a directory" in err


def test_evaluate_refuses_an_output_it_cannot_write_before_scoring(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--model-dir", str(tmp_path / "m"), "--data", data_dir, "--output",
                       str(tmp_path / "missing" / "m.json")])
    assert info.value.code == 2
    assert f"directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


# --- 7: corrupt shards and NaN weights, on a build trained for one step -----------------------
@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("one_step") / "m"
    train.train(config("din", *ONE_STEP), data_dir, str(model_dir), verbose=0)
    return str(model_dir)


def damaged_copy(data_dir, root, split, how):
    """A copy of the data directory with the first shard of `split` cut to a fifth
    ("truncated") or with bytes flipped after its gzip header ("corrupt"); returns (copy,
    the damaged file)."""
    copy = os.path.join(root, f"data_{split}_{how}")
    shutil.copytree(data_dir, copy)
    shard = sorted(glob.glob(os.path.join(copy, split, "*.tfrecord.gz")))[0]
    raw = bytearray(open(shard, "rb").read())
    if how == "truncated":
        raw = raw[:len(raw) // 5]
    else:
        raw[20:40] = bytes(b ^ 0xFF for b in raw[20:40])
    open(shard, "wb").write(bytes(raw))
    return copy, shard


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_evaluate_on_a_damaged_shard_names_the_file(trained, data_dir, tmp_path, capsys, how):
    copy, shard = damaged_copy(data_dir, str(tmp_path), "test", how)
    assert evaluate.main(["--model-dir", trained, "--data", copy]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt TFRecord data: " + shard in err, err
    assert "rebuild" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_training_on_a_damaged_shard_names_the_file(data_dir, tmp_path, capsys):
    copy, shard = damaged_copy(data_dir, str(tmp_path), "valid", "truncated")
    code = train.main(["--config", "configs/din.yaml", "--data", copy, "--model-dir",
                       str(tmp_path / "m"), *sum((["--set", s] for s in [*TINY, *ONE_STEP]), [])])
    err = capsys.readouterr().err
    assert code == 2 and "truncated or corrupt TFRecord data: " + shard in err, err


def test_exporting_non_finite_weights_is_refused(trained, data_dir, tmp_path, capsys):
    model_dir = tmp_path / "nan_model"
    shutil.copytree(trained, model_dir)
    _, model = load_trained_model(str(model_dir), data_dir)
    variable = model.weights[0]
    variable.assign(np.full(variable.shape, np.nan, variable.dtype))
    model.save_weights(model_layout.weights_path(str(model_dir)))
    with pytest.raises(SystemExit) as info:
        export.main(["--model-dir", str(model_dir), "--output", str(tmp_path / "export"),
                     "--data", data_dir])
    assert info.value.code == 2
    assert f"{model_layout.weights_path(str(model_dir))} is not exported: variable " \
           f"{variable.path} holds NaN" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "export" / "[0-9]*"))
