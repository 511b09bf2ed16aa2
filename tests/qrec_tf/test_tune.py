"""qrec_tf.tune: a tiny search end to end without the test split, the space parser, errors."""

import csv
import json
import os
import shutil

import pytest
import yaml

from qrec_tf import tune
from qrec_tf.config import load_config

TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "model.sas_blocks=1", "train.batch_size=256", "train.shuffle_buffer=2000",
        "train.epochs=1", "train.steps_per_epoch=3"]


def test_a_tiny_search_writes_its_trials_and_the_best_config_without_the_test_split(
        data_dir, tmp_path, capsys):
    # A copy of the data without test/: a tuner that read it would fail.
    data = str(tmp_path / "data")
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns("test"))
    assert not os.path.exists(os.path.join(data, "test"))
    output = str(tmp_path / "tune")
    args = ["--config", "configs/queryrec.yaml", "--data", data, "--trials", "2",
            "--output", output, *[f"--set={item}" for item in TINY],
            "--space", "model.contrastive_weight=choice:0.0,0.2",
            "--space", "train.learning_rate=log:1e-3:1e-2"]
    assert tune.main(args) == 0
    rows = list(csv.DictReader(open(os.path.join(output, "trials.csv"))))
    assert [int(r["trial"]) for r in rows] == [0, 1]
    assert set(rows[0]) >= {"model.nip_weight", "model.contrastive_weight",
                            "model.embedding_l2", "train.learning_rate", "val_auc"}
    for row in rows:
        assert 0.0 <= float(row["model.nip_weight"]) <= 1.0
        assert float(row["model.contrastive_weight"]) in (0.0, 0.2)
        assert 1e-3 <= float(row["train.learning_rate"]) <= 1e-2
    study = json.load(open(os.path.join(output, "study.json")))
    best_row = max((r for r in rows if r["state"] == "complete"),
                   key=lambda r: float(r["val_auc"]))
    assert study["best"]["val_auc"] == pytest.approx(float(best_row["val_auc"]))
    best = load_config(os.path.join(output, "best.yaml"))
    assert best.model.din.nip_weight == pytest.approx(float(best_row["model.nip_weight"]))
    assert str(best.model.din.query_encoder_ctr_gradient) == \
        best_row["model.query_encoder_ctr_gradient"]
    assert best.train.learning_rate == pytest.approx(float(best_row["train.learning_rate"]))
    assert best.train.steps_per_epoch == 3          # the fixed --set values are kept
    assert "best of 2 trials" in capsys.readouterr().out
    assert yaml.safe_load(open(os.path.join(output, "best.yaml")))["model"]["name"] == "queryrec"


def test_space_parser_and_default_space():
    assert tune.parse_dimension("model.nip_weight=0:2") == tune.Dimension(
        "model.nip_weight", 0.0, 2.0)
    assert tune.parse_dimension("train.learning_rate=log:1e-4:1e-2").log
    assert tune.parse_dimension("model.sas_blocks=choice:1,2").choices == (1, 2)
    for bad in ("nip_weight=0:1", "model.nip_weight=1:0", "model.x=log:0:1", "model.x=a:b"):
        with pytest.raises(ValueError):
            tune.parse_dimension(bad)
    din = [d.key for d in tune.default_space(load_config("configs/din.yaml"))]
    assert din == ["model.embedding_l2", "train.learning_rate"]
    queryrec = tune.default_space(load_config("configs/queryrec.yaml"))
    assert [d.key for d in queryrec[:3]] == ["model.nip_weight",
                                             "model.query_encoder_ctr_gradient",
                                             "model.contrastive_weight"]
    # NIP may be all that trains the encoder: its weight is never searched at 0.
    assert (queryrec[0].low, queryrec[0].high) == (0.05, 1.0)
    assert queryrec[1].choices == (False, True)


def test_cli_errors_are_messages(data_dir, tmp_path, capsys):
    assert tune.main(["--config", "configs/din.yaml", "--data", data_dir, "--trials", "1",
                      "--output", str(tmp_path), "--space", "model.no_such_key=0:1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert tune.main(["--config", "configs/din.yaml", "--data", str(tmp_path / "nothing"),
                      "--trials", "1"]) == 2
    assert "error" in capsys.readouterr().err
