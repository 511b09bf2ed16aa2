"""The config.yaml of a model directory written by an older version, read by today's loader.

A train run writes every key of its config, flat, into <model_dir>/config.yaml. Since issue 34
each model reads only its own keys and some keys are gone, so such a file no longer loads as a
user's config would (an unread or unknown key is an error there). A model directory is not a
user's choice but a record of what was trained: `evaluate`, `export` and `train --warm-start`
read it through `load_saved_config`, which drops what did not change the trained model (a key
its model never read, a deleted key at the value every committed config had, a speed-only key)
and refuses, naming the key, a model trained with a variant that no longer exists.
"""

from __future__ import annotations

import dataclasses

from qrec_tf import config as C

# Keys deleted in issue 34 (docs/RESULTS.md, "Issue 34: keys deleted", code at 2f5ee32) -> the
# value with which the model is the one this version builds; None: speed only, any value.
DELETED_KEYS = {
    "query_dropout": 0.0,
    "query_encoder_input": "vector",
    "query_fusion": "concat",
    "query_attention_positions": False,
    "embedding_l2_counts": "vocab",
    "attention_packed": None,
    "sas_bucketed": None,
    "attention_jit_compile": None,
}


# Train keys deleted since a model directory could be written (train.warm_start_optimizer: carry
# was measured worse on every day and deleted at c59954a; the fresh optimizer is "reset").
DELETED_TRAIN_KEYS = {"warm_start_optimizer": "reset"}


def _drop_deleted(values: dict, deleted: dict, section: str, source: str) -> dict:
    values = dict(values)
    for key, kept in deleted.items():
        if key not in values:
            continue
        value = values.pop(key)
        if kept is not None and value != kept:
            raise ValueError(
                f"{source} was trained with {section}.{key}={value!r}, a variant this version "
                f"no longer has (measured and not chosen: docs/RESULTS.md); retrain it, or use "
                f"the version that trained it")
    return values


def upgrade_model_values(values: dict, source: str) -> dict:
    """The model mapping of a saved config with what its model never read, and the deleted keys
    at their kept values, left out; ValueError for a deleted variant that was on."""
    values = _drop_deleted(values, DELETED_KEYS, "model", source)
    name = values.get("name", C.ModelConfig.name)
    family = C.model_family(name)
    reads = family.section_keys_read() | set(family.implied)
    section_fields = {f.name for f in dataclasses.fields(family.section)}
    for key in list(values):
        unread_backbone = key in C.BACKBONE_KEYS and key in family.backbone_unread
        other_section = (key not in C.BACKBONE_KEYS and key != family.key
                         and key not in section_fields and key not in C.LEGACY_KEYS)
        unread_own = key in section_fields and key not in reads
        if unread_backbone or other_section or unread_own:
            del values[key]
    section = values.get(family.key)
    if isinstance(section, dict):
        values[family.key] = {k: v for k, v in section.items() if k in reads}
    return values


def load_saved_config(path: str) -> C.Config:
    """The Config of a model directory's config.yaml, old or new (see the module's docstring)."""
    values = C.read_config_file(path)
    if isinstance(values.get("model"), dict):
        values["model"] = upgrade_model_values(values["model"], path)
    if isinstance(values.get("train"), dict):
        values["train"] = _drop_deleted(values["train"], DELETED_TRAIN_KEYS, "train", path)
    return C.Config.from_dict(values)
