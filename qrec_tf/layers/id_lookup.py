"""Raw ids -> embedding indices inside the graph, from the Beam job's vocabularies.

Training and serving use the same lookup, so there is no skew, and an id never seen in training
maps to the OOV index instead of failing. Indices: 0 = padding (raw -1 / ""), 1 = OOV,
2.. = vocabulary in file order (most frequent first).
"""

from __future__ import annotations

import keras

from qrec_tf import schema as S

PAD_INDEX, OOV_INDEX = 0, 1


def make_lookup(values: list, dtype: str, name: str) -> keras.layers.Layer:
    """IntegerLookup / StringLookup with padding -> 0 and one OOV index -> 1.

    An empty vocabulary still works (every id is OOV): the lookup layers refuse an empty list, so
    it gets a placeholder that no real id can equal.
    """
    if dtype == "int64":
        return keras.layers.IntegerLookup(
            vocabulary=values or [-2], mask_token=S.PAD_ID, num_oov_indices=1,
            vocabulary_dtype="int64", name=name)
    return keras.layers.StringLookup(
        vocabulary=values or ["\x00<empty>"], mask_token=S.PAD_KEY.decode(), num_oov_indices=1,
        name=name)


def lookup_size(values: list) -> int:
    """Rows an embedding table needs for a lookup over `values`: padding + OOV + vocabulary."""
    return max(len(values), 1) + 2
