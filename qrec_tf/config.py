"""Experiment configuration: dataclasses loaded from YAML (configs/<name>.yaml), overridable from
the command line with `--set section.key=value` (values parsed as YAML: 32, 1e-3, true,
[64, 32])."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from typing import Any, Iterable, Mapping

import yaml


def check_ranges(section: object, key: str, at_least_one: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """ValueError naming `model.<key>.<field>` for a field below its bound (a section's
    validate)."""
    for name in at_least_one:
        if getattr(section, name) < 1:
            raise ValueError(f"model.{key}.{name} must be >= 1")
    for name in non_negative:
        if getattr(section, name) < 0:
            raise ValueError(f"model.{key}.{name} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model name brings to its config: the family's section (`model.<key>`, a
    dataclass defined in the family's module), the section values the name fixes (`implied`:
    loading fills them in and rejects a value that differs), and the keys it never reads (a
    config that sets one is an error). qrec_tf.models.registry registers one per model name."""

    key: str
    section: type
    implied: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backbone_unread: tuple[str, ...] = ()

    def section_keys_read(self) -> set[str]:
        """The section's keys that this model reads: all, unless the section says otherwise
        for these implied values (`keys_read(implied)`)."""
        reads = getattr(self.section, "keys_read", None)
        fields = {f.name for f in dataclasses.fields(self.section)}
        return set(reads(self.implied)) if reads else fields


_MODELS: dict[str, Family] = {}


def register_models(families: Mapping[str, Family]) -> None:
    """Makes the model names loadable (qrec_tf.models.registry calls it once, with its list)."""
    _MODELS.update(families)


def model_family(name: str) -> Family:
    """The Family of a model name; ValueError for an unknown name."""
    if name not in _MODELS:
        hint = "" if _MODELS else " (none is: import qrec_tf.models.registry, which registers them)"
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_MODELS)}{hint}")
    return _MODELS[name]


@dataclasses.dataclass
class ModelConfig:
    """What the model is: its name (qrec_tf.models.registry), the backbone keys that every
    family shares (embeddings, MLP, target attention, the embedding penalty), and the
    family's own typed section (`model.din`, `model.ple`, ...: `section`, read as
    `config.<key>`). docs/CONFIG.md lists every key."""

    name: str = "din"
    embedding_dim: int = 16
    # Hashed rows for ids outside the vocabulary, per table (layers.id_lookup.bucketed): 0 = one
    # shared OOV row; B > 0 = an unseen id gets one of B rows by a hash of its value, inside the
    # graph (docs/ARCHITECTURE.md, "Continuous training").
    oov_buckets: int = 0
    mlp_units: list[int] = dataclasses.field(default_factory=lambda: [200, 80])
    mlp_activation: str = "dice"
    dropout: float = 0.0
    attention_units: list[int] = dataclasses.field(default_factory=lambda: [80, 40])
    attention_activation: str = "dice"
    attention_softmax: bool = False
    # DIN's mini-batch aware L2 on the embedding rows a batch touches, each weighted by the
    # inverse of its id's vocabulary count (Zhou et al. KDD'18); 0 = off. docs/PAPER.md, "MBA".
    embedding_l2: float = 0.0
    # The family's section (None: its defaults with what the name implies).
    section: Any = None

    def __post_init__(self):
        if self.section is None:
            family = model_family(self.name)
            self.section = family.section(**family.implied)

    def __getattr__(self, key: str):
        # config.din, config.ple, ...: the section under its YAML key (only the model's own).
        if key == _MODELS.get(self.__dict__.get("name"), _NO_FAMILY).key:
            return self.__dict__["section"]
        raise AttributeError(f"model {self.__dict__.get('name')!r} has no key {key!r}")

    @property
    def family(self) -> Family:
        return model_family(self.name)

    def section_named(self, key: str) -> Any:
        """The section `model.<key>` when the model's family has it, else None (for code that
        serves every model: `config.section_named("din")`)."""
        return self.section if self.family.key == key else None

    def validate(self) -> None:
        """The backbone's ranges, what the name implies, then the section's own checks
        (`section.validate(self)`)."""
        if self.embedding_dim < 1:
            raise ValueError("model.embedding_dim must be >= 1")
        if self.oov_buckets < 0:
            raise ValueError("model.oov_buckets must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.dropout must be in [0, 1)")
        if self.embedding_l2 < 0:
            raise ValueError("model.embedding_l2 must be >= 0")
        for key in ("mlp_units", "attention_units"):
            if not getattr(self, key) or min(getattr(self, key)) < 1:
                raise ValueError(f"model.{key} must be a non-empty list of integers >= 1, got "
                                 f"{getattr(self, key)}")
        family = self.family
        if not isinstance(self.section, family.section):
            raise ValueError(f"model {self.name!r} needs a model.{family.key} section")
        check_implied(self)   # before the section's own checks: the name is the first mistake
        self.section.validate(self)

    def to_dict(self) -> dict:
        """The backbone keys and the section's keys that the model reads (what loads back)."""
        family = self.family
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "section" and f.name not in family.backbone_unread}
        read = family.section_keys_read() | set(family.implied)
        values[family.key] = {k: v for k, v in dataclasses.asdict(self.section).items()
                              if k in read}
        return values


_NO_FAMILY = Family("", object)
BACKBONE_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "section")


def reads_key(name: str, override: str) -> bool:
    """Whether model `name` reads the key of a `model.key=value` or `model.<section>.key=value`
    override (a train.* one: True), e.g. to give every model of a test the small settings it
    has."""
    path = override.split("=", 1)[0].split(".")
    if path[0] != "model":
        return True
    family, key = model_family(name), path[-1]
    if len(path) == 2 and key in BACKBONE_KEYS:
        return key not in family.backbone_unread
    if len(path) == 3 and path[1] != family.key:
        return False
    return key in family.section_keys_read() | set(family.implied)


def check_implied(model: ModelConfig) -> None:
    """Raises ValueError, naming the key, when a value differs from what model.name implies."""
    family = model.family
    for key, value in family.implied.items():
        if getattr(model.section, key) != value:
            raise ValueError(f"model.{family.key}.{key} is {getattr(model.section, key)!r}, but "
                             f"model {model.name!r} implies {value!r}: leave it out (the name "
                             "sets it)")


def _model_from_dict(values: dict) -> ModelConfig:
    """The model section of a config file: backbone keys, the family's section (nested, or its
    keys given flat beside the backbone's), each key checked to be one that the model reads."""
    values = dict(values)
    name = values.get("name", ModelConfig.name)
    if not isinstance(name, str):
        raise ValueError(f"model.name must be a string, got {name!r}")
    family = model_family(name)
    values = _nest_flat_keys(values)
    section = values.pop(family.key, None) or {}
    if not isinstance(section, dict):
        raise ValueError(f"model.{family.key} must be a mapping of its keys, got {section!r}")
    for key in values:
        if key not in BACKBONE_KEYS:
            raise ValueError(f"model.{key} is not a key of model {name!r}: its keys are the "
                             f"backbone's {list(BACKBONE_KEYS)} and model.{family.key}'s "
                             f"{sorted(family.section_keys_read() | set(family.implied))}")
    fields = {f.name for f in dataclasses.fields(family.section)}
    for key in family.backbone_unread:
        if key in values:
            raise ValueError(f"model.{key} is set, but model {name!r} does not read it: "
                             "leave it out")
    read = family.section_keys_read()
    for key in section:
        if key in fields and key not in read and key not in family.implied:
            raise ValueError(f"model.{family.key}.{key} is set, but model {name!r} does not "
                             "read it: leave it out")
    built = _build(family.section, {**family.implied, **section}, f"model.{family.key}")
    return _build(ModelConfig, {**values, "section": built}, "model")


# The flat keys of the baselines' sections before they had one -> (section, key): a config.yaml
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


def _flat_key(values: dict, key: str) -> tuple[str, str] | None:
    """(section, key) that a flat model key `key` stands for: an older name (LEGACY_KEYS) or a
    key of the model's section given beside the backbone's (`model.nip_weight` for
    `model.din.nip_weight`); None for a backbone key or one that is no key of the section."""
    if key in LEGACY_KEYS:
        return LEGACY_KEYS[key]
    if key in BACKBONE_KEYS:
        return None
    family = _MODELS.get(values.get("name", ModelConfig.name))
    if family and key in {f.name for f in dataclasses.fields(family.section)}:
        return family.key, key
    return None


def _nest_flat_keys(values: dict) -> dict:
    """A model mapping with its flat section keys moved into their section (a key given both
    ways is an error)."""
    values = dict(values)
    for old in list(values):
        target = _flat_key(values, old)
        if target is None:
            continue
        section, key = target
        nested = dict(values.get(section) or {})
        if key in nested:
            raise ValueError(f"model.{old} and model.{section}.{key} are the same setting; "
                             f"give model.{section}.{key} only")
        nested[key] = values.pop(old)
        values[section] = nested
    return values


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
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        values = values or {}
        unknown = set(values) - {"model", "train"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; use model: and train:")
        return cls(model=_model_from_dict(values.get("model") or {}),
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
        flat = _flat_key(values.get("model") or {}, key) if sections == ["model"] else None
        if flat:   # model.ple_levels: model.ple.levels; model.nip_weight: model.din.nip_weight
            sections, key = ["model", flat[0]], flat[1]
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


def read_config_file(path: str | None, seen: tuple[str, ...] = ()) -> dict:
    """A config file's mapping with the file it `extends` (a path relative to it) merged under
    it: a mapping merges key by key, any other value replaces the base's."""
    values = read_yaml_mapping(path, "model, train; see configs/*.yaml")
    base = values.pop("extends", None)
    if base is None:
        return values
    base_path = os.path.join(os.path.dirname(path), base)
    if os.path.abspath(base_path) in seen:
        raise ValueError(f"config file {path} extends {base}, which extends it back")
    return _merged(read_config_file(base_path, (*seen, os.path.abspath(path))), values)


def _merged(base: dict, values: dict) -> dict:
    merged = dict(base)
    for key, value in values.items():
        merged[key] = (_merged(base[key], value)
                       if isinstance(value, dict) and isinstance(base.get(key), dict) else value)
    return merged


def load_config(path: str | None, overrides: Iterable[str] = ()) -> Config:
    values = read_config_file(path)
    if isinstance(values.get("model"), dict):   # flat section keys, before the overrides
        values["model"] = _nest_flat_keys(values["model"])
    return Config.from_dict(apply_overrides(values, overrides))
