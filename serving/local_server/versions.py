"""Version management: one loaded SavedModel version, and the repository that polls the base
path and swaps in the newest numbered version (TF Serving's default "latest version" policy).

A new version is loaded and warmed up with its `assets.extra/tf_serving_warmup_requests` before
it replaces the old one; a version that fails to load is logged and skipped (and tried again
once its files change), and the previous one keeps being served.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

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
VERSION_PATTERN = re.compile(r"^\d+$")


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
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if VERSION_PATTERN.match(n)
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


class ModelRepository:
    """Serves the newest numbered version under `base_path` and swaps in newer ones."""

    def __init__(self, model_name: str, base_path: str):
        self.model_name = model_name
        self.base_path = base_path
        self._current: ServedVersion | None = None
        # version -> fingerprint of its files when it failed to load: retried once they change
        self._failed: dict[int, tuple] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> ServedVersion | None:
        return self._current

    @property
    def failed_versions(self) -> frozenset[int]:
        """Versions that failed to load and whose files have not changed since (a version is
        retried when they do, e.g. a broken export fixed in place)."""
        return frozenset(self._failed)

    def _unchanged_failure(self, version: int) -> bool:
        if version not in self._failed:
            return False
        path = os.path.join(self.base_path, str(version))
        if directory_fingerprint(path) == self._failed[version]:
            return True
        del self._failed[version]
        LOG.info("the files of %s changed since it failed to load: trying it again", path)
        return False

    def poll(self) -> bool:
        """Loads the newest version if it is not the one served; True when it swapped one in."""
        versions = [v for v in numbered_versions(self.base_path)
                    if not self._unchanged_failure(v)]
        current = self._current
        if not versions or (current is not None and versions[-1] == current.version):
            return False
        version = versions[-1]
        path = os.path.join(self.base_path, str(version))
        started = time.perf_counter()
        fingerprint = directory_fingerprint(path)  # before loading: a change meanwhile retries
        try:
            loaded = ServedVersion(path, version)
            warmed = loaded.warm_up()
        except Exception:  # a broken export must not take the server down
            LOG.exception("could not load %s; still serving version %s", path,
                          current.version if current else None)
            self._failed[version] = fingerprint
            return False
        with self._lock:
            self._current = loaded
        LOG.info("serving %s version %d (loaded in %.1f s, %d warmup requests)",
                 self.model_name, version, time.perf_counter() - started, warmed)
        return True

    def get(self, model_name: str, version: int | None = None) -> ServedVersion:
        if model_name != self.model_name:
            raise not_found(f"Servable not found for request: model {model_name!r} (this server "
                            f"serves {self.model_name!r})")
        current = self._current
        if current is None:
            raise not_found(f"Could not find any versions of model {model_name} (none loaded yet "
                            f"from {self.base_path})")
        if version is not None and version != current.version:
            raise not_found(f"Servable not found for request: Specific({model_name}, {version}); "
                            f"the loaded version is {current.version}")
        return current
