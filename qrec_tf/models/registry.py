"""Model names -> builders: the one list of the models (`MODELS`). Each name is a model family's
class with its typed config section (defined in the family's module) and the section values the
name fixes: for the DIN family, which parts of QueryRec it has (docs/PAPER.md tables 4, 5).
Loading a config fills in what the name implies and rejects a value that differs
(qrec_tf.config, which this module registers the names with); other hyper-parameters come from
the config (configs/<name>.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from qrec_tf import config as C
from qrec_tf import schema as S
from qrec_tf.config import ModelConfig, check_implied
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.dcn import DCN_UNREAD, DCNConfig, DCNModel
from qrec_tf.models.din import DINConfig, DINModel
from qrec_tf.models.iv4rec import IV4RecConfig, IV4RecModel
from qrec_tf.models.ple import PLEConfig, PLEModel
from qrec_tf.models.sesrec import SESRecConfig, SESRecModel


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


def load_vocabularies(data_dir: str, schema: S.Schema) -> Vocabularies:
    """Every vocabulary of the schema with its counts, from <data_dir>/vocab/."""
    dtypes = {f.vocab: f.dtype for f in schema.features if f.vocab}
    values, counts = {}, {}
    for vocab, dtype in sorted(dtypes.items()):
        rows = S.read_vocab(data_dir, vocab)
        values[vocab] = [int(v) if dtype == "int64" else v for v, _ in rows]
        counts[vocab] = [count for _, count in rows]
    return Vocabularies(values, counts)


def build_model(config: ModelConfig, data_dir: str) -> CTRModel:
    """The registered model for `config`, with lookups from <data_dir>/vocab/, and its variables
    created (on one row of padding built from the schema's specs, so no split is read):
    checkpoint restores need them."""
    check_name(config)
    schema = S.Schema.load(data_dir)
    vocabularies = dataclasses.replace(load_vocabularies(data_dir, schema),
                                       oov_buckets=config.oov_buckets)
    return build_with_vocabularies(config, data_dir, schema, vocabularies)


def build_with_vocabularies(config: ModelConfig, data_dir: str, schema: S.Schema,
                            vocabularies: Vocabularies) -> CTRModel:
    """build_model with the given vocabularies (a warm start builds the previous model with its
    own): the data constants come from `data_dir`, indexed by these vocabularies."""
    check_name(config)
    cls = MODELS[config.name].cls
    model = cls(config, schema, vocabularies,
                **cls.data_constants(config, data_dir, schema, vocabularies), name=config.name)
    model(schema.padding_batch(), training=False)
    return model
