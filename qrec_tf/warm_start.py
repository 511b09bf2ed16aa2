"""Warm start (`python -m qrec_tf.train --warm-start MODEL_DIR`): a new model on new data that
begins as the previous model.

Every embedding table row of the previous model is copied to the row of the *same vocabulary
value* in the new model (the padding and OOV rows and the hashed OOV buckets to theirs); rows of
values the previous model never saw keep the new model's initialisation. With vocabularies built
by `build_tfrecords --previous-data` a value's row index is the same in both, but the copy goes
by value, so a renumbered vocabulary is mapped correctly too (values missing from the new
vocabulary are counted as dropped). Every other variable (MLPs, attention, encoders) must have
the same shape and is copied as it is. So before its first step the new model scores any example
whose ids the previous model knew exactly as the previous model does.

The optimizer starts fresh (its slots reset): the weights file that training keeps holds no
optimizer state, and docs/RESULTS.md (issue 33) says why that is what we keep.

The previous model's vocabularies are read from <MODEL_DIR>/vocab/ (qrec_tf.train copies them
there), so the data directory it was trained on may be gone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import tensorflow as tf

from qrec_tf import model_layout
from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.registry import build_with_vocabularies, load_vocabularies
from qrec_tf.saved_config import load_saved_config

# Config values that fix the variables' shapes and meaning: a warm start keeps them.
STRUCTURAL = ("name", "embedding_dim", "oov_buckets", "mlp_units", "attention_units")


def save_vocabularies(data_dir: DataDirectory | str, model_dir: str) -> None:
    """Copies <data_dir>/vocab/ to <model_dir>/vocab/: what a later warm start maps rows by."""
    data_dir = DataDirectory.of(data_dir).path
    target = model_layout.vocab_dir(model_dir)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(target)
    for vocab in S.VOCABULARIES:
        tf.io.gfile.copy(S.vocab_path(data_dir, vocab), os.path.join(target, vocab + ".txt"))


def model_vocabularies(model_dir: str, schema: S.Schema, oov_buckets: int) -> Vocabularies:
    """The vocabularies a trained model was built with (<model_dir>/vocab/)."""
    vocab_dir = model_layout.vocab_dir(model_dir)
    if not os.path.isdir(vocab_dir):
        raise FileNotFoundError(f"{vocab_dir} not found: --warm-start needs a model trained by "
                                "this version of qrec_tf.train (it keeps the vocabularies there)")
    # load_vocabularies reads <dir>/vocab/<name>.txt: the model dir has that layout.
    return dataclasses.replace(load_vocabularies(model_dir, schema), oov_buckets=oov_buckets)


def check_structure(previous: ModelConfig, new: ModelConfig, previous_dir: str) -> None:
    for key in STRUCTURAL:
        if getattr(previous, key) != getattr(new, key):
            raise ValueError(f"--warm-start {previous_dir}: model.{key} is "
                             f"{getattr(previous, key)!r} there and {getattr(new, key)!r} in this "
                             "config; a warm start keeps the model's structure")


def row_mapping(old: Vocabularies, new: Vocabularies, vocab: str) -> tuple[np.ndarray, np.ndarray]:
    """(old rows, new rows) int64 [k]: where each old row goes (padding, OOV, every value that
    both vocabularies hold, every OOV bucket)."""
    old_values, new_values = old.values[vocab], new.values[vocab]
    new_index = {value: i + 2 for i, value in enumerate(new_values)}
    pairs = [(0, 0), (1, 1)]
    pairs += [(i + 2, new_index[v]) for i, v in enumerate(old_values) if v in new_index]
    pairs += [(old.values_end(vocab) + k, new.values_end(vocab) + k)
              for k in range(old.oov_buckets)]
    rows = np.asarray(pairs, np.int64).reshape(-1, 2)
    return rows[:, 0], rows[:, 1]


def warm_start(model: CTRModel, previous_dir: str, data_dir: DataDirectory | str) -> dict:
    """Copies the trained model in `previous_dir` into `model` (built on `data_dir`); returns
    {"from", "tables": {vocab: {"kept", "new", "dropped"}}, "variables": copied count}."""
    config_path, weights = model_layout.finished_run_files(previous_dir,
                                                           f"--warm-start {previous_dir!r}")
    previous_config = load_saved_config(config_path).model
    check_structure(previous_config, model.config, previous_dir)
    old_vocab = model_vocabularies(previous_dir, model.schema, previous_config.oov_buckets)
    old = build_with_vocabularies(previous_config, data_dir, old_vocab)
    old.load_weights(weights)

    old_tables = {id(v): name for name, v in old.embedding_tables().items()}
    new_tables = {name: v for name, v in model.embedding_tables().items()}
    new_by_path = {v.path: v for v in model.weights}
    report = {"from": os.path.abspath(previous_dir), "tables": {}, "variables": 0}
    for variable in old.weights:
        target = new_by_path.get(variable.path)
        if target is None:
            raise ValueError(f"--warm-start {previous_dir}: the new model has no variable "
                             f"{variable.path} (another model version?)")
        vocab = old_tables.get(id(variable))
        if vocab is not None:
            source_rows, target_rows = row_mapping(old_vocab, model.vocabularies, vocab)
            rows = np.array(target.numpy())
            rows[target_rows] = variable.numpy()[source_rows]
            target.assign(rows)
            kept = len(source_rows) - 2 - old_vocab.oov_buckets
            report["tables"][vocab] = {
                "kept": kept, "new": len(model.vocabularies.values[vocab]) - kept,
                "dropped": len(old_vocab.values[vocab]) - kept}
            del new_tables[vocab]
        elif tuple(variable.shape) != tuple(target.shape):
            raise ValueError(f"--warm-start {previous_dir}: {variable.path} has shape "
                             f"{tuple(variable.shape)} there and {tuple(target.shape)} here")
        else:
            target.assign(variable)
        report["variables"] += 1
    return report
