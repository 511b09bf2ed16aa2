"""The data directory, loaded: one object that train, evaluate, export, warm start, compare, tune
and the augment stage make once (from `--data`) and pass to everything that reads the data.

    data = DataDirectory.of("data/")      # a path, or a DataDirectory passed on as it is
    data.schema, data.lineage            # <data>/schema.json, read once (SchemaMismatch there)
    data.split_size("train")             # <data>/stats.json's count, read once (None: unknown)
    data.vocab("items")                  # [(value, count)] of <data>/vocab/items.txt, once
    data.item_categories(item_values)    # item_categories.tsv, parsed once, per item row
    data.positives("auto", None)         # the contrastive positives table and its source
    data.query_items()                   # the query -> items table's rows (streamed)
    data.dataset("train", 1024, ...)     # qrec_tf.data.make_dataset with the schema and sizes

Every file is read on first use and kept, so a directory is read once however many models are
built on it (a warm start builds two), and a directory that holds only some files (the augment
stage needs only query_items/ and vocab/) loads as well as a whole one. The names of the files
are `qrec_tf.layout`'s; each file's reader stays with its format (`schema.load_with_lineage`,
`schema.read_vocab`, `data.read_item_categories`, `positives.load`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from qrec_tf import data, layout, positives
from qrec_tf import schema as S


class DataDirectory:
    """A data directory (`pipelines.build_tfrecords --output`), each of its files read once."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._vocab: dict[str, list[tuple[str, int]]] = {}
        self._positives: dict[tuple[str, str | None], tuple[dict[str, list[int]], str]] = {}

    @classmethod
    def of(cls, source: "str | os.PathLike | DataDirectory") -> "DataDirectory":
        """`source` itself when it is loaded already, else the directory at that path (the CLI
        edge: a `--data` string becomes the one object passed on)."""
        return source if isinstance(source, DataDirectory) else cls(source)

    def __repr__(self) -> str:
        return f"DataDirectory({self.path!r})"

    # --- schema.json and stats.json ----------------------------------------------------------
    @functools.cached_property
    def _schema_and_lineage(self) -> tuple[S.Schema, dict | None]:
        return S.load_with_lineage(self.path)

    @property
    def schema(self) -> S.Schema:
        """The sequence lengths the data was written with; FileNotFoundError without
        schema.json, SchemaMismatch for data of another version (both say to rebuild)."""
        return self._schema_and_lineage[0]

    @property
    def lineage(self) -> dict | None:
        """schema.json's lineage (which build wrote the data), None for data without one."""
        return self._schema_and_lineage[1]

    @functools.cached_property
    def stats(self) -> dict | None:
        """stats.json, None when the directory has none."""
        path = layout.stats_path(self.path)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    def split_size(self, split: str) -> int | None:
        """Examples in a split as the Beam job counted them (stats.json), or None if unknown."""
        count = (self.stats or {}).get("examples", {}).get(split, {}).get("count")
        return int(count) if count is not None else None

    # --- vocabularies and tables -------------------------------------------------------------
    def vocab(self, name: str) -> list[tuple[str, int]]:
        """[(value, count)] of vocab/<name>.txt in file order (most frequent first)."""
        if name not in self._vocab:
            self._vocab[name] = S.read_vocab(self.path, name)
        return self._vocab[name]

    @functools.cached_property
    def _item_categories(self) -> dict[int, tuple[int, int, int]]:
        return data.read_item_categories(self.path)

    def item_categories(self, item_values: Sequence) -> np.ndarray:
        """int64 [len(item_values) + 2, 3]: the raw (category, sub-category, author) of each item
        row (`data.item_categories`); the file is parsed once for any item vocabulary."""
        return data.item_categories_table(self._item_categories, item_values)

    def positives(self, source: str, positives_dir: str | None = None
                  ) -> tuple[dict[str, list[int]], str]:
        """The contrastive positives table for `source` (log, diffusion, auto) and the source
        used (`positives.load`), read once per (source, positives_dir)."""
        key = (source, positives_dir)
        if key not in self._positives:
            self._positives[key] = positives.load(self.path, source, positives_dir)
        return self._positives[key]

    def query_items(self) -> Iterator[dict]:
        """The rows of the query -> items table (`data.query_items`); streamed, not kept: it is
        the largest table, and each reader turns it into its own arrays."""
        return data.query_items(self.path)

    def query_item_batches(self, batch_size: int = 4096):
        return data.query_item_batches(self.path, batch_size)

    # --- examples ----------------------------------------------------------------------------
    def dataset(self, split: str, batch_size: int, **options) -> tf.data.Dataset:
        """`data.make_dataset` on this directory (its schema and stats.json's sizes)."""
        return data.make_dataset(self, split, batch_size, **options)

    def multitask_dataset(self, batch_size: int, **options) -> tf.data.Dataset:
        """`data.make_multitask_dataset` on this directory."""
        return data.make_multitask_dataset(self, batch_size, **options)
