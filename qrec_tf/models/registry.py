"""Model names -> builders: the one list of the models (`MODELS`). Each name is a model family's
class with its typed config section (defined in the family's module) and the section values the
name fixes: for the DIN family, which parts of QueryRec it has (docs/PAPER.md tables 4, 5).
Loading a config fills in what the name implies and rejects a value that differs
(qrec_tf.config, which this module registers the names with); other hyper-parameters come from
the config (configs/<name>.yaml)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple

from qrec_tf import config as C
from qrec_tf import model_layout
from qrec_tf import schema as S
from qrec_tf.config import Config, ModelConfig, check_implied
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.dcn import DCN_UNREAD, DCNConfig, DCNModel
from qrec_tf.models.din import DINConfig, DINModel
from qrec_tf.models.iv4rec import IV4RecConfig, IV4RecModel
from qrec_tf.models.ple import PLEConfig, PLEModel
from qrec_tf.models.sesrec import SESRecConfig, SESRecModel
from qrec_tf.saved_config import load_saved_config


class Model(NamedTuple):
    """A registered model: its class, and what its name brings to the config (`config.Family`:
    the section's key and type, the values the name implies, backbone keys it never reads)."""

    cls: type
    family: C.Family

    @property
    def implied(self) -> dict[str, Any]:
        return dict(self.family.implied)


def _din(**parts) -> Model:
    """A DIN-family model: DIN plus the query-side parts `parts` (model.din values). The parts
    not given are off: no v_q, no e_qt, no NIP loss, no contrastive loss."""
    off = dict(query_pooling=False, query_encoder=False, nip_weight=0.0, contrastive_weight=0.0)
    implied = {**off, **parts}
    # A loss the name allows is free (its weight is a hyper-parameter): not implied.
    for loss in ("nip_weight", "contrastive_weight"):
        if implied[loss] is None:
            del implied[loss]
    return Model(DINModel, C.Family("din", DINConfig, implied))


# The models: table 5's ablation (the DIN family: the parts each name has) and table 4's
# baselines. Adding a model: its class and section in its module, and one line here.
MODELS: dict[str, Model] = {
    "din": _din(),
    "din_query": _din(query_pooling=True),                            # + eq 2
    "din_nip": _din(query_encoder=True, nip_weight=None),             # + e_qt, NIP (eqs 13-14)
    "din_con": _din(query_pooling=True, contrastive_weight=None, positives="log"),   # + eq 15
    "din_con_diffusion": _din(query_pooling=True, contrastive_weight=None,
                              positives="diffusion"),   # eq 15 on the diffusion positives
    "queryrec": _din(query_pooling=True, query_encoder=True, nip_weight=None,
                     contrastive_weight=None),          # eq 16
    "dcn": Model(DCNModel, C.Family("dcn", DCNConfig, backbone_unread=DCN_UNREAD)),
    # PLE's two task losses are its whole loss (PLEModel.compute_loss_terms): no embedding L2.
    "ple": Model(PLEModel, C.Family("ple", PLEConfig, backbone_unread=("embedding_l2",))),
    "sesrec": Model(SESRecModel, C.Family("sesrec", SESRecConfig)),
    "iv4rec": Model(IV4RecModel, C.Family("iv4rec", IV4RecConfig)),
}
C.register_models({name: model.family for name, model in MODELS.items()})


def check_name(config: ModelConfig) -> None:
    """ValueError for a name without a class, or a value that the name contradicts (a config
    changed after loading: loading checks it already)."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {sorted(MODELS)}")
    check_implied(config)


def load_vocabularies(data: DataDirectory | str, schema: S.Schema | None = None
                      ) -> Vocabularies:
    """Every vocabulary of the schema with its counts: those of a loaded data directory (each
    file read once, however many models are built on it), or, given a path, those under
    <path>/vocab/ (a model directory's copy, `warm_start.model_vocabularies`) read now."""
    if isinstance(data, DataDirectory):
        schema, read = schema or data.schema, data.vocab
    else:
        schema = schema or S.Schema.load(data)
        read = functools.partial(S.read_vocab, data)
    dtypes = {f.vocab: f.dtype for f in schema.features if f.vocab}
    values, counts = {}, {}
    for vocab, dtype in sorted(dtypes.items()):
        rows = read(vocab)
        values[vocab] = [int(v) if dtype == "int64" else v for v, _ in rows]
        counts[vocab] = [count for _, count in rows]
    return Vocabularies(values, counts)


def build_model(config: ModelConfig, data: DataDirectory | str) -> CTRModel:
    """The registered model for `config`, with lookups from the data's vocab/, and its variables
    created (on one row of padding built from the schema's specs, so no split is read):
    checkpoint restores need them. `data`: the loaded data directory (a path is loaded here)."""
    check_name(config)
    data = DataDirectory.of(data)
    vocabularies = dataclasses.replace(load_vocabularies(data), oov_buckets=config.oov_buckets)
    return build_with_vocabularies(config, data, vocabularies)


def build_with_vocabularies(config: ModelConfig, data: DataDirectory | str,
                            vocabularies: Vocabularies) -> CTRModel:
    """build_model with the given vocabularies (a warm start builds the previous model with its
    own): the data constants come from `data`, indexed by these vocabularies."""
    check_name(config)
    data = DataDirectory.of(data)
    cls = MODELS[config.name].cls
    model = cls(config, data.schema, vocabularies,
                **cls.data_constants(config, data, vocabularies), name=config.name)
    model(data.schema.padding_batch(), training=False)
    return model


def load_trained_model(model_dir: str, data: DataDirectory | str) -> tuple[Config, CTRModel]:
    """(config, model): the model of a finished training run rebuilt from
    <model_dir>/config.yaml on `data` and its trained weights loaded; the model's vocabularies
    are checked against the data's first (`check_model_data`). `qrec_tf.evaluate` names it for
    the CLIs; the augment stage reads a trained model's item table through it."""
    config_path, weights = model_layout.finished_run_files(model_dir, repr(model_dir))
    data = DataDirectory.of(data)
    check_model_data(model_dir, data)   # one clear message, not a shape error in Keras
    config = load_saved_config(config_path)
    model = build_model(config.model, data)
    model.load_weights(weights)
    return config, model


def check_model_data(model_dir: str, data_dir: DataDirectory | str) -> None:
    """ValueError, in one message, when the model in `model_dir` was built on other
    vocabularies than `data_dir`'s (its rows would be read as other ids). A model without
    <model_dir>/vocab/ (trained before it was kept) is not checked."""
    vocab_dir = model_layout.vocab_dir(model_dir)
    if not os.path.isdir(vocab_dir):
        return
    data = DataDirectory.of(data_dir)
    lineage = data.lineage or {}
    run = model_layout.read_run(model_dir) if os.path.exists(
        model_layout.run_path(model_dir)) else {}
    trained_on = (run.get("data_lineage") or {}).get("build_id", "unrecorded")
    for vocab in S.VOCABULARIES:
        mine = [value for value, _ in S.read_vocab(model_dir, vocab)]
        theirs = [value for value, _ in data.vocab(vocab)]
        if mine != theirs:
            extended = theirs[:len(mine)] == mine
            raise ValueError(
                f"the model in {model_dir} (trained on build {trained_on}) does not match the "
                f"data in {data.path} (build {lineage.get('build_id', 'unrecorded')}): vocabulary "
                f"{vocab!r} has {len(mine)} values there and {len(theirs)} here"
                + (", which extend them" if extended else ", in another order")
                + ". Score new data with the model's export (python -m qrec_tf.compare "
                  "--saved-models), or train on it with python -m qrec_tf.train --warm-start "
                  f"{model_dir}")
