"""A features dict that records which features are read: how `CTRModel.input_feature_names`
finds the features a model reads by tracing its loss once."""

from __future__ import annotations

from typing import Iterator, Mapping

import tensorflow as tf


class RecordingFeatures(Mapping):
    """A read-only view of a features dict that adds the name of every feature read
    (`features[name]`, `features.get(name)`, iteration) to `read`; `name in features` is not a
    read (a model may test for an optional feature)."""

    def __init__(self, features: Mapping[str, tf.Tensor], read: set[str]):
        self._features, self._read = features, read

    def __getitem__(self, name: str) -> tf.Tensor:
        value = self._features[name]
        self._read.add(name)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __iter__(self) -> Iterator[str]:
        self._read.update(self._features)   # whoever iterates may read any of them
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)
