"""Experiment configuration: dataclasses loaded from YAML (configs/<name>.yaml), overridable from
the command line with `--set section.key=value` (values parsed as YAML: 32, 1e-3, true,
[64, 32])."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Iterable

import yaml


def _check(section: object, name: str, at_least_one: tuple[str, ...] = (),
           non_negative: tuple[str, ...] = ()) -> None:
    for key in at_least_one:
        if getattr(section, key) < 1:
            raise ValueError(f"model.{name}.{key} must be >= 1")
    for key in non_negative:
        if getattr(section, key) < 0:
            raise ValueError(f"model.{name}.{key} must be >= 0")


@dataclasses.dataclass
class DCNConfig:
    """model.dcn: cross layers (keras-rs FeatureCross) beside the deep MLP (mlp_units)."""

    cross_layers: int = 2

    def validate(self) -> None:
        _check(self, "dcn", at_least_one=("cross_layers",))


@dataclasses.dataclass
class PLEConfig:
    """model.ple: extraction levels, experts per task and shared, each expert's Dense units; the
    search click task's loss weight (the feed click task has weight 1; towers are mlp_units)."""

    levels: int = 2
    task_experts: int = 1
    shared_experts: int = 1
    expert_units: list[int] = dataclasses.field(default_factory=lambda: [64])
    search_task_weight: float = 1.0

    def validate(self) -> None:
        _check(self, "ple", ("levels", "task_experts", "shared_experts"), ("search_task_weight",))


@dataclasses.dataclass
class SESRecConfig:
    """model.sesrec: weights of the query-item alignment (InfoNCE; its temperature and sampled
    negatives are model.contrastive_temperature and contrastive_negatives) and of the interest
    triplet loss, and the triplet margin; the encoders use model.sas_blocks / sas_heads /
    sas_dropout."""

    alignment_weight: float = 0.1
    triplet_weight: float = 0.1
    triplet_margin: float = 1.0

    def validate(self) -> None:
        _check(self, "sesrec", non_negative=("alignment_weight", "triplet_weight",
                                             "triplet_margin"))


@dataclasses.dataclass
class IV4RecConfig:
    """model.iv4rec: queries per item (the item's instrumental variables), the first-stage
    regression MLP's hidden units, and the weights of the user and item first-stage losses."""

    item_queries: int = 5
    units: list[int] = dataclasses.field(default_factory=lambda: [64])
    user_weight: float = 0.9
    item_weight: float = 0.9

    def validate(self) -> None:
        _check(self, "iv4rec", ("item_queries",), ("user_weight", "item_weight"))


# The flat keys of the config before the per-model sections -> (section, key): a config.yaml
# written by an older train run still loads.
LEGACY_KEYS = {
    "cross_layers": ("dcn", "cross_layers"),
    "ple_levels": ("ple", "levels"), "ple_task_experts": ("ple", "task_experts"),
    "ple_shared_experts": ("ple", "shared_experts"), "ple_expert_units": ("ple", "expert_units"),
    "search_task_weight": ("ple", "search_task_weight"),
    "sesrec_alignment_weight": ("sesrec", "alignment_weight"),
    "sesrec_triplet_weight": ("sesrec", "triplet_weight"),
    "sesrec_triplet_margin": ("sesrec", "triplet_margin"),
    "iv_item_queries": ("iv4rec", "item_queries"), "iv_units": ("iv4rec", "units"),
    "iv_user_weight": ("iv4rec", "user_weight"), "iv_item_weight": ("iv4rec", "item_weight"),
}


def _nest_legacy_keys(values: dict) -> dict:
    """A model mapping with LEGACY_KEYS moved into their sections (a key given both ways is an
    error)."""
    values = dict(values)
    for old, (section, key) in LEGACY_KEYS.items():
        if old in values:
            nested = dict(values.get(section) or {})
            if key in nested:
                raise ValueError(f"model.{old} and model.{section}.{key} are the same setting; "
                                 f"give model.{section}.{key} only")
            nested[key] = values.pop(old)
            values[section] = nested
    return values


# What a model name implies: the parts of QueryRec it has (docs/PAPER.md tables 4, 5). Loading a
# config fills in what the file leaves out and rejects a value that differs, so configs/*.yaml do
# not restate them; the other keys are free. qrec_tf.models.registry maps the same names to
# their classes.
NO_QUERY_SIDE = dict(query_pooling=False, query_encoder=False, nip_weight=0.0,
                     contrastive_weight=0.0)     # DIN and the other baselines of table 4
POOLING_ONLY = dict(query_pooling=True, query_encoder=False, nip_weight=0.0)
IMPLIED_BY_NAME: dict[str, dict[str, Any]] = {
    "din": NO_QUERY_SIDE,
    "din_query": {**POOLING_ONLY, "contrastive_weight": 0.0},
    "din_nip": dict(query_pooling=False, query_encoder=True, contrastive_weight=0.0),
    "din_con": {**POOLING_ONLY, "positives": "log"},
    "din_con_diffusion": {**POOLING_ONLY, "positives": "diffusion"},
    "queryrec": dict(query_pooling=True, query_encoder=True),
    "dcn": NO_QUERY_SIDE,
    "ple": NO_QUERY_SIDE,
    "sesrec": NO_QUERY_SIDE,
    "iv4rec": NO_QUERY_SIDE,
}


def implied_values(name: str) -> dict[str, Any]:
    """The config values that the model name `name` fixes; ValueError for an unknown name."""
    if name not in IMPLIED_BY_NAME:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(IMPLIED_BY_NAME)}")
    return IMPLIED_BY_NAME[name]


def check_implied(model: "ModelConfig") -> None:
    """Raises ValueError, naming the key, when a value differs from what model.name implies."""
    for key, value in implied_values(model.name).items():
        if getattr(model, key) != value:
            raise ValueError(f"model.{key} is {getattr(model, key)!r}, but model {model.name!r} "
                             f"implies {value!r}: leave model.{key} out (the name sets it)")


@dataclasses.dataclass
class ModelConfig:
    """What the model is. The name picks the builder (qrec_tf.models.registry) and fixes the
    values in IMPLIED_BY_NAME; the other fields are its hyper-parameters."""

    name: str = "din"
    embedding_dim: int = 16
    # Hashed rows for ids outside the vocabulary, per table (layers.id_lookup.bucketed): 0 = one
    # shared OOV row; B > 0 = an unseen id gets one of B rows by a hash of its value, inside the
    # graph (docs/ARCHITECTURE.md, "Continuous training"; the default is measured in
    # docs/RESULTS.md, issue 33).
    oov_buckets: int = 0
    mlp_units: list[int] = dataclasses.field(default_factory=lambda: [200, 80])
    mlp_activation: str = "dice"
    dropout: float = 0.0
    attention_units: list[int] = dataclasses.field(default_factory=lambda: [80, 40])
    attention_activation: str = "dice"
    attention_softmax: bool = False
    # Query side (docs/PAPER.md): eq 2 target-attention pooling of the query list, and the SASRec
    # encoder whose output joins the CTR input and is trained by the NIP loss (eqs 13-14). Both
    # are implied by the name (IMPLIED_BY_NAME); the defaults here are din's.
    query_pooling: bool = False
    query_encoder: bool = False
    sas_blocks: int = 2
    sas_heads: int = 1
    sas_dropout: float = 0.2
    # Encode the query list's rows in groups cut to their real spans (SASEncoder bucketed): the
    # same outputs, work that follows the real lengths. false: every row at its full length.
    sas_bucketed: bool = True
    nip_weight: float = 0.0             # lambda2
    # Whether the NIP loss also moves the item embeddings it scores against (True: plain joint
    # training). False: NIP trains the query side only (SAS encoder, query embeddings) towards
    # the item space the click loss learns; configs/din_nip.yaml and queryrec.yaml use False, as
    # NIP's gradient into the shared item embeddings cost ~1.5% AUC on the benchmark log
    # (docs/RESULTS.md, "NIP and the item embeddings").
    nip_trains_items: bool = True
    contrastive_weight: float = 0.0     # lambda3
    contrastive_temperature: float = 0.2  # beta
    contrastive_positives: int = 5      # positives of the last query per example (top by clicks)
    contrastive_negatives: int = 64     # items sampled per batch, shared by its examples
    # "log": the query_items/ table of the Beam job; "diffusion": the augment stage's table;
    # "auto": diffusion when <data>/positives/ exists, else log.
    positives: str = "log"
    # Where the augment stage's table is (its --output dir or that dir's positives/);
    # None: <data>/positives.
    positives_dir: str | None = None
    # The query side's CTR inputs (v_q, e_qt): dropout, and a learned per-channel scale
    # (LayerScale) starting at query_scale_init (None: no scale, the paper's plain concatenation;
    # 0: the model starts as its DIN backbone). docs/ARCHITECTURE.md, "The query branch".
    query_dropout: float = 0.0
    query_scale_init: float | None = None
    # How e_qt joins the CTR input: "vector" (eq 3 as printed: e_qt itself) or "target_product"
    # (e_qt * the target item's embedding, whose sum is NIP's score of the target).
    query_encoder_input: str = "vector"
    # Where the query side joins the click logit: "concat" (eq 3 as printed: v_q and e_qt are
    # inputs of the CTR MLP) or "bilinear" (the MLP reads DIN's inputs only, and the logit adds
    # [v_q || e_qt]^T W [target item], W starting at 0: the query side can only score how well
    # the target matches the user's queries). docs/ARCHITECTURE.md, "The query branch".
    query_fusion: str = "concat"
    # False: the click loss does not train the SAS encoder (e_qt reaches the click logit through
    # a stop_gradient), so NIP alone shapes e_qt and the click loss can only learn how to read
    # it. docs/ARCHITECTURE.md, "The query branch".
    query_encoder_ctr_gradient: bool = True
    # What the query attention (eq 2) compares each query with: "item_id" (the target's item-id
    # embedding) or "item" (the target's whole representation [item || category || sub-category]
    # projected to embedding_dim by a learned matrix, so a query can match the target's
    # categories, which every impression trains, and not only its id, which few do).
    # docs/ARCHITECTURE.md, "The query branch".
    query_attention_target: str = "item_id"
    # True: a learned vector per position of the query list (zero at the start) is added to the
    # queries the query attention reads, so it can weigh recent queries above old ones.
    query_attention_positions: bool = False
    # True: each query's vector also holds the items clicked in its search session
    # (query_clicked_item_ids) and the categories its session's results lie in
    # (query_category_ids, query_subcategory_ids), represented as the target is ([item ||
    # category || sub-category]) and projected by the same matrix as the target (needs
    # query_attention_target: item), so the query attention can match a query with a target of
    # the same sub-category even when the query's words are rare or it got no click.
    query_item_context: bool = False
    # True: a learned vector per age bucket of each query (the impression's timestamp minus the
    # query's, layers.age_embedding; zero at the start) is added to the query vectors that the
    # query attention and the SAS encoder read: a search of an hour ago and one of nine days ago
    # differ. docs/ARCHITECTURE.md, "The query branch".
    query_age_embedding: bool = False
    # True: the click logit adds a linear term (weights starting at 0) of time-decayed counts of
    # the user's search events that share the target's item, author, category or sub-category
    # (layers.search_match). docs/ARCHITECTURE.md, "The query branch".
    search_match: bool = False
    # DIN's mini-batch aware L2 on the embedding rows a batch touches, each weighted by the
    # inverse of its id's frequency (Zhou et al. KDD'18); 0 = off. docs/PAPER.md, "MBA".
    embedding_l2: float = 0.0
    # The n_j of that penalty: "vocab" (the Beam job's vocabulary counts: search sessions for
    # queries, interactions for items) or "rows" (training examples whose inputs hold the id,
    # counted before training: DIN's definition, models/row_frequencies.py).
    embedding_l2_counts: str = "vocab"
    # XLA on every DIN attention's scoring and pooling (DINAttention jit_compile): the same
    # math, fused; float rounding differs. docs/RESULTS.md, issue 21.
    attention_jit_compile: bool = False
    # Score only the real (target, key) pairs of every DIN attention (DINAttention packed): the
    # same values, work that follows the real sequence lengths. false: every padded position.
    attention_packed: bool = True
    # Each model's own hyper-parameters, in its section (YAML `model.ple: {levels: 3}`,
    # `--set model.ple.levels=3`); a model reads only its own section.
    dcn: DCNConfig = dataclasses.field(default_factory=lambda: DCNConfig())
    ple: PLEConfig = dataclasses.field(default_factory=lambda: PLEConfig())
    sesrec: SESRecConfig = dataclasses.field(default_factory=lambda: SESRecConfig())
    iv4rec: IV4RecConfig = dataclasses.field(default_factory=lambda: IV4RecConfig())

    def validate(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError("model.embedding_dim must be >= 1")
        if self.oov_buckets < 0:
            raise ValueError("model.oov_buckets must be >= 0")
        if self.positives not in ("log", "diffusion", "auto"):
            raise ValueError("model.positives must be log, diffusion or auto")
        if self.positives_dir is not None and (not self.positives_dir
                                               or self.positives == "log"):
            raise ValueError("model.positives_dir must be a non-empty path and is read only with "
                             "model.positives diffusion or auto")
        if not 0.0 <= self.query_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.dropout and model.query_dropout must be in [0, 1)")
        if self.query_encoder_input not in ("vector", "target_product"):
            raise ValueError("model.query_encoder_input must be vector or target_product")
        if self.query_fusion not in ("concat", "bilinear"):
            raise ValueError("model.query_fusion must be concat or bilinear")
        if self.query_fusion == "bilinear" and not (self.query_pooling or self.query_encoder):
            raise ValueError("model.query_fusion bilinear needs query_pooling or query_encoder")
        if self.query_attention_target not in ("item_id", "item"):
            raise ValueError("model.query_attention_target must be item_id or item")
        if self.query_item_context and not (self.query_pooling
                                            and self.query_attention_target == "item"):
            raise ValueError("model.query_item_context needs model.query_pooling and "
                             "model.query_attention_target: item (the clicked items and the "
                             "target share one projection)")
        if self.query_age_embedding and not (self.query_pooling or self.query_encoder):
            raise ValueError("model.query_age_embedding needs model.query_pooling or "
                             "model.query_encoder (it changes the query vectors they read)")
        if self.embedding_l2 < 0:
            raise ValueError("model.embedding_l2 must be >= 0")
        if self.embedding_l2_counts not in ("vocab", "rows"):
            raise ValueError("model.embedding_l2_counts must be vocab or rows")
        if self.query_encoder and not self.query_encoder_ctr_gradient and not self.nip_weight:
            raise ValueError("model.query_encoder_ctr_gradient false needs model.nip_weight > 0: "
                             "nothing else would train the query encoder")
        if self.nip_weight and not self.query_encoder:
            raise ValueError("model.nip_weight > 0 needs model.query_encoder: true (NIP trains it)")
        if self.contrastive_weight and self.contrastive_temperature <= 0:
            raise ValueError("model.contrastive_temperature must be > 0")
        if self.sas_heads < 1 or self.sas_blocks < 1:
            raise ValueError("model.sas_heads and model.sas_blocks must be >= 1")
        for key in ("mlp_units", "attention_units"):
            if not getattr(self, key) or min(getattr(self, key)) < 1:
                raise ValueError(f"model.{key} must be a non-empty list of integers >= 1, got "
                                 f"{getattr(self, key)}")
        if self.query_encoder and self.embedding_dim % self.sas_heads:
            raise ValueError("model.embedding_dim must be divisible by model.sas_heads")
        for section in (self.dcn, self.ple, self.sesrec, self.iv4rec):
            section.validate()


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 1024
    epochs: int = 5
    learning_rate: float = 1e-3
    optimizer: str = "lazy_adam"
    seed: int = 0
    early_stopping_patience: int = 2
    shuffle_buffer: int = 100_000
    steps_per_epoch: int | None = None      # None: one pass over train/
    validation_steps: int | None = None     # None: one pass over valid/
    # True: TensorFlow's deterministic ops (tf.config.experimental.enable_op_determinism): the
    # same seed, data and machine give the same weights, at some speed (docs/RESULTS.md,
    # "Runs, seeds and machines"). Other CPUs (other instruction sets) may still round
    # differently.
    deterministic: bool = False

    def validate(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("train.batch_size and train.epochs must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("train.learning_rate must be > 0")
        if self.shuffle_buffer < 1:
            raise ValueError(f"train.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.early_stopping_patience < 0:
            raise ValueError("train.early_stopping_patience must be >= 0, got "
                             f"{self.early_stopping_patience}")
        for key in ("steps_per_epoch", "validation_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1 or null (one pass over the split), "
                                 f"got {getattr(self, key)}")


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        values = values or {}
        unknown = set(values) - {"model", "train"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; use model: and train:")
        model_values = _nest_legacy_keys(values.get("model") or {})
        implied = implied_values(model_values.get("name", ModelConfig.name))
        model = _build(ModelConfig, {**implied, **model_values}, "model")
        check_implied(model)   # a value the file gives that the name contradicts
        return cls(model=model,
                   train=_build(TrainConfig, values.get("train") or {}, "train")).validate()


def _build(kind, values: dict, section: str):
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {section} key(s) {sorted(unknown)}; known: {sorted(fields)}")
    return kind(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def _is_section(hint) -> bool:
    return dataclasses.is_dataclass(hint) and isinstance(hint, type)


# A number in exponent notation without a dot ("1e-3", "5E4"), which YAML 1.2 reads as a float.
_YAML11_FLOAT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def _coerce(value: Any, hint, key: str):
    """Checks a YAML value against the field's type (ints are accepted where floats are)."""
    if _is_section(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping of its keys, got {value!r}")
        return _build(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is float and isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        value = float(value)   # "1e-3": PyYAML (YAML 1.1) reads a float without a "." as text
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if hint in (float, str) and not isinstance(value, hint):
        raise ValueError(f"{key} must be a {hint.__name__}, got {value!r}")
    return value


def apply_overrides(values: dict, overrides: Iterable[str]) -> dict:
    """Applies `section.key=value` strings (`model.ple.levels=3` in a model's own section) to a
    config dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects section.key=value (e.g. model.embedding_dim=32), "
                             f"got {item!r}")
        path, raw = item.split("=", 1)
        *sections, key = path.split(".")
        if sections == ["model"] and key in LEGACY_KEYS:   # model.ple_levels: model.ple.levels
            sections = ["model", LEGACY_KEYS[key][0]]
            key = LEGACY_KEYS[key][1]
        target = values
        for depth, section in enumerate(sections):
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ValueError(f"config section {'.'.join(sections[:depth + 1])!r} is not a "
                                 "mapping")
        try:
            target[key] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ValueError(f"--set {item}: the value is not valid YAML ({problem}); quote "
                             "lists as a whole, e.g. --set 'model.mlp_units=[64, 32]'") from None
    return values


def read_yaml_mapping(path: str | None, sections: str) -> dict:
    """The mapping in a YAML config file ({} without a path); clear errors for a missing file,
    invalid YAML or a file that does not hold a mapping of `sections` (named in the message)."""
    if not path:
        return {}
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ValueError(f"config file {path} not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections ({sections})")
    return values


def load_config(path: str | None, overrides: Iterable[str] = ()) -> Config:
    values = read_yaml_mapping(path, "model, train; see configs/*.yaml")
    if isinstance(values.get("model"), dict):   # an older file's flat keys, before the overrides
        values["model"] = _nest_legacy_keys(values["model"])
    return Config.from_dict(apply_overrides(values, overrides))
