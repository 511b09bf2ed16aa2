"""The model directory: what `qrec_tf.train` writes and evaluate, export, compare, tune and
distribute read. Its file names live here only.

    <model_dir>/
      config.yaml        CONFIG_FILE      the resolved config (`qrec_tf.config`)
      model.weights.h5   WEIGHTS_FILE     the weights of the best validation AUC
      best.weights.h5    BEST_WEIGHTS_FILE  ModelCheckpoint's copy while training
      run.json           RUN_FILE         data dir, best epoch, history, throughput
      tensorboard/       TENSORBOARD_DIR  every loss term, AUC, learning rate, examples/s
      backup/            BACKUP_DIR       BackupAndRestore's state while running (a killed run
                                          resumes from it; removed when the run ends)
      vocab/             VOCAB_DIR        a copy of the data's vocab/: the values each table row
                                          is of (qrec_tf.warm_start maps rows by them)
"""

from __future__ import annotations

import json
import os

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.weights.h5"
RUN_FILE = "run.json"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
VOCAB_DIR = "vocab"


def config_path(model_dir: str) -> str:
    return os.path.join(model_dir, CONFIG_FILE)


def weights_path(model_dir: str) -> str:
    return os.path.join(model_dir, WEIGHTS_FILE)


def finished_run_files(model_dir: str, named_as: str) -> tuple[str, str]:
    """(config path, weights path) of a finished training run in `model_dir`; FileNotFoundError
    naming `named_as` (how the user gave the directory, e.g. "--warm-start DIR") otherwise."""
    paths = config_path(model_dir), weights_path(model_dir)
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {named_as} the --model-dir of a "
                                    "finished `python -m qrec_tf.train` run?")
    return paths


def best_weights_path(model_dir: str) -> str:
    return os.path.join(model_dir, BEST_WEIGHTS_FILE)


def run_path(model_dir: str) -> str:
    return os.path.join(model_dir, RUN_FILE)


def tensorboard_dir(model_dir: str) -> str:
    return os.path.join(model_dir, TENSORBOARD_DIR)


def backup_dir(model_dir: str) -> str:
    return os.path.join(model_dir, BACKUP_DIR)


def vocab_dir(model_dir: str) -> str:
    return os.path.join(model_dir, VOCAB_DIR)


def write_run(model_dir: str, run: dict) -> None:
    with open(run_path(model_dir), "w") as f:
        json.dump(run, f, indent=2)


def read_run(model_dir: str) -> dict:
    with open(run_path(model_dir)) as f:
        return json.load(f)


def resolve_data_dir(model_dir: str, data_dir: str | None) -> str:
    """--data, or the data directory the model was trained on (run.json)."""
    if data_dir:
        return data_dir
    run_file = run_path(model_dir)
    if not os.path.exists(run_file):
        raise FileNotFoundError(f"{run_file} not found: pass --data (the Beam job's output the "
                                "model was trained on)")
    with open(run_file) as f:
        recorded = json.load(f).get("data_dir")
    if not recorded or not os.path.isdir(recorded):
        raise FileNotFoundError(f"{run_file} records data_dir {recorded!r}, which does not exist "
                                "here: pass --data")
    return recorded
