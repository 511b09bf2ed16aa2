"""Version management: one loaded SavedModel version, and the repository that polls the base
path and serves the versions its version policy selects (TF Serving's default: the newest one),
with the version labels of a `models.config` (a ModelServerConfig, `--model_config_file`).

A new version is loaded and warmed up with its `assets.extra/tf_serving_warmup_requests` before
it is served; a version that fails to load is logged and skipped (and tried again once its files
change), and the others keep being served. A version whose directory is removed is unloaded, so
removing every version leaves none served, as in TF Serving. Directory names are versions by TF
Serving's rule (qrec_tf.version_names: ASCII digits, int64).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from qrec_tf.version_names import parse_version
from serving.local_server.validation import (
    DEFAULT_SIGNATURE,
    RequestError,
    Signature,
    check_inputs,
    decode_proto_inputs,
    graph_error_text,
    not_found,
)

LOG = logging.getLogger("serving.local_server")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class ServedVersion:
    """One loaded SavedModel version: its signatures and its SignatureDef protos (metadata)."""

    def __init__(self, path: str, version: int):
        self.path = path
        self.version = version
        self.saved_model = tf.saved_model.load(path)
        self.signatures = {}
        for name, function in self.saved_model.signatures.items():
            _, kwargs = function.structured_input_signature
            self.signatures[name] = Signature(function, dict(kwargs))
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        graph = graphs[0] if graphs else proto.meta_graphs[0]
        for name, definition in graph.signature_def.items():
            self.signature_defs.signature_def[name].CopyFrom(definition)

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise RequestError(f"Serving signature name: {name!r} not found in signature def; "
                               f"this model has {sorted(self.signatures)}")
        return self.signatures[name]

    def predict(self, signature_name: str, arrays: Mapping[str, np.ndarray],
                max_scored_rows: int | None = None) -> dict[str, np.ndarray]:
        """Inputs -> {output name: array}; `max_scored_rows` as in `check_inputs`."""
        signature = self.signature(signature_name)
        return self.run(signature_name, check_inputs(signature_name or DEFAULT_SIGNATURE,
                                                     signature, arrays, max_scored_rows))

    def run(self, signature_name: str, tensors: Mapping[str, tf.Tensor]
            ) -> dict[str, np.ndarray]:
        """Checked inputs (`check_inputs`) -> {output name: array}."""
        signature = self.signature(signature_name)
        try:
            outputs = signature.function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            # Checks inside the graph (e.g. score_candidates' shape asserts).
            raise RequestError(graph_error_text(error.message)) from None
        except UnicodeDecodeError:
            # TensorFlow quotes the bad bytes of an unparsable input (a serialized tf.Example
            # that is not one) in its error message, and that message then fails to decode:
            # still the request's fault, and TF Serving answers it as INVALID_ARGUMENT.
            raise RequestError(f"{signature_name or DEFAULT_SIGNATURE}: an input could not be "
                               "parsed (e.g. examples that are not serialized tf.Example "
                               "records)") from None
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self) -> int:
        """Replays the export's warmup requests (TF Serving's file format); returns how many."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name, decode_proto_inputs(
                    request.inputs, self.signature(request.model_spec.signature_name)))
                count += 1
        return count


def numbered_versions(base_path: str) -> list[int]:
    """The version directories (with a saved_model.pb) under `base_path`, ascending."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(parse_version(n) for n in names if parse_version(n) is not None
                  and os.path.exists(os.path.join(base_path, n, "saved_model.pb")))


def directory_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under `path`: changes when its files do."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError:  # removed while walking
                continue
            entries.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model of a ModelServerConfig: its version policy and version labels.

    Policy (TF Serving's model_version_policy): `specific` versions when given, else every
    version when `all_versions`, else the newest `latest` ones (default 1).
    """

    name: str
    base_path: str
    latest: int = 1
    specific: tuple[int, ...] = ()
    all_versions: bool = False
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def select(self, versions: list[int]) -> list[int]:
        """The versions (ascending, on disk and loadable) this policy serves."""
        if self.specific:
            return [v for v in versions if v in self.specific]
        if self.all_versions:
            return list(versions)
        return versions[-self.latest:] if versions else []


def read_model_config(path: str) -> ModelConfig:
    """A models.config (ModelServerConfig text proto with one model) -> ModelConfig, or
    ValueError saying what is wrong."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        with open(path) as f:
            text_format.Parse(f.read(), config)
    except (OSError, text_format.ParseError) as error:
        raise ValueError(f"cannot read --model_config_file {path}: {error}") from None
    models = config.model_config_list.config
    if len(models) != 1:
        raise ValueError(f"{path} lists {len(models)} models; the local server serves exactly one")
    model = models[0]
    if not model.name or not model.base_path:
        raise ValueError(f"{path}: the model needs a name and a base_path")
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice")
    specific = tuple(policy.specific.versions) if which == "specific" else ()
    if which == "specific" and not specific:
        raise ValueError(f"{path}: model_version_policy specific lists no versions")
    latest = policy.latest.num_versions if which == "latest" else 1
    if latest < 1:
        raise ValueError(f"{path}: model_version_policy latest num_versions must be >= 1")
    labels = dict(model.version_labels)
    return ModelConfig(model.name, model.base_path, latest=latest, specific=specific,
                       all_versions=which == "all", labels=labels)


class ModelRepository:
    """Serves the versions under `base_path` that the policy selects (default: the newest), and
    answers version labels."""

    def __init__(self, model_name: str, base_path: str, config: ModelConfig | None = None):
        self.config = config or ModelConfig(model_name, base_path)
        self.model_name = self.config.name
        self.base_path = self.config.base_path
        self._versions: dict[int, ServedVersion] = {}  # replaced whole, never mutated
        # version -> fingerprint of its files when it failed to load: retried once they change
        self._failed: dict[int, tuple] = {}
        self._lock = threading.Lock()  # one poll at a time

    @property
    def current(self) -> ServedVersion | None:
        """The newest loaded version (what a request without a version gets)."""
        versions = self._versions
        return versions[max(versions)] if versions else None

    @property
    def loaded(self) -> dict[int, ServedVersion]:
        return dict(self._versions)

    @property
    def failed_versions(self) -> frozenset[int]:
        """Versions that failed to load and whose files have not changed since (a version is
        retried when they do, e.g. a broken export fixed in place)."""
        return frozenset(self._failed)

    def set_config(self, config: ModelConfig) -> None:
        """A re-read models.config (same model): new policy and labels from the next poll on."""
        if (config.name, config.base_path) != (self.model_name, self.base_path):
            raise ValueError("a reloaded models.config must keep the model's name and base_path")
        self.config = config

    def _unchanged_failure(self, version: int) -> bool:
        if version not in self._failed:
            return False
        path = os.path.join(self.base_path, str(version))
        if directory_fingerprint(path) == self._failed[version]:
            return True
        del self._failed[version]
        LOG.info("the files of %s changed since it failed to load: trying it again", path)
        return False

    def _load(self, version: int) -> ServedVersion | None:
        path = os.path.join(self.base_path, str(version))
        started = time.perf_counter()
        fingerprint = directory_fingerprint(path)  # before loading: a change meanwhile retries
        try:
            loaded = ServedVersion(path, version)
            warmed = loaded.warm_up()
        except Exception:  # a broken export must not take the server down
            LOG.exception("could not load %s; still serving versions %s", path,
                          sorted(self._versions))
            self._failed[version] = fingerprint
            return None
        LOG.info("serving %s version %d (loaded in %.1f s, %d warmup requests)", self.model_name,
                 version, time.perf_counter() - started, warmed)
        return loaded

    def poll(self) -> bool:
        """Loads the versions the policy selects and unloads the others; True when the served
        set changed. A selected version that fails to load is skipped, so under the latest
        policy the previous version keeps being served."""
        with self._lock:
            old = self._versions
            new = dict(old)
            while True:
                versions = [v for v in numbered_versions(self.base_path)
                            if not self._unchanged_failure(v)]
                wanted = self.config.select(versions)
                missing = [v for v in wanted if v not in new]
                if not missing:
                    break
                loaded = self._load(missing[-1])
                if loaded is not None:
                    new[loaded.version] = loaded
            new = {v: new[v] for v in wanted}
            if new.keys() == old.keys():
                return False
            self._versions = new
            unloaded = sorted(set(old) - set(new))
            LOG.info("%s: served versions %s%s", self.model_name, sorted(new),
                     f" (unloaded {unloaded})" if unloaded else "")
            missing_labels = {k: v for k, v in self.config.labels.items() if v not in new}
            if missing_labels:
                LOG.warning("version labels %s name versions that are not loaded",
                            missing_labels)
            return True

    def get(self, model_name: str, version: int | None = None,
            label: str | None = None) -> ServedVersion:
        """The version a request names: a number, a label (models.config's version_labels), or
        neither (the newest loaded)."""
        if model_name != self.model_name:
            raise not_found(f"Servable not found for request: model {model_name!r} (this server "
                            f"serves {self.model_name!r})")
        versions = self._versions
        if not versions:
            raise not_found(f"Could not find any versions of model {model_name} (none loaded "
                            f"from {self.base_path})")
        if label is not None:
            if label not in self.config.labels:
                raise not_found(f"Unrecognized servable version label: {label} (models.config "
                                f"labels {sorted(self.config.labels)})")
            version = self.config.labels[label]
            if version not in versions:
                raise not_found(f"Servable not found for request: Specific({model_name}, "
                                f"{version}) (label {label!r}); loaded: {sorted(versions)}")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise not_found(f"Servable not found for request: Specific({model_name}, {version}); "
                            f"the loaded versions are {sorted(versions)}")
        return versions[version]
