"""The one place where a feature is named.

Every example the Beam job writes, every tensor `qrec_tf.data` yields, every Keras input and every
serving signature takes its name, dtype, shape, vocabulary and padding value from here.

Conventions (docs/ARCHITECTURE.md, "Data and inputs"):
- Ids are the raw ids of the logs; the model maps them to indices inside the graph with the
  vocabularies in `<data>/vocab/`. Raw ids are non-negative, so `PAD_ID = -1` marks padding and
  missing values in integer features, and `PAD_KEY = b""` in string features.
- Sequences are fixed length and **left-padded**: the most recent event is at the last position,
  so `query_keys[:, -1]` is the user's last query before t, and a causal encoder reads the
  sequence in time order.
- A query is stored as its canonical key ("20_34_3", `pipelines.kuaisar.query_key`) plus its
  first `max_query_words` word ids (right-padded), and the items clicked in that search session
  (`query_clicked_item_ids`: the first `query_clicked_items` by item id, right-padded; a query
  slot that is padding has none).
- Every query slot also carries *when* its session happened (`query_timestamps`, ms, as the
  impression's `timestamp`) and where its results lie (`query_category_ids`,
  `query_subcategory_ids`: the category most of the session's shown items belong to, so that a
  session without a click is placed too). The model computes each query's age, `timestamp -
  query_timestamps`, inside the graph: a served request carries both raw times, never ages.

Tensor shapes below are per example; `qrec_tf.data` adds a leading batch dimension.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from typing import Any, Iterable, Mapping

import tensorflow as tf
from tensorflow.core.example import example_pb2

# The data directory's names live in qrec_tf.layout (dependency-free, for the Beam jobs too);
# re-exported here, where every reader of the data has always found them.
from qrec_tf.layout import (  # noqa: F401 (re-exported)
    COMPRESSION,
    DEAD_LETTER_DIR,
    EXAMPLE_FILE_PATTERN,
    EXAMPLE_SPLITS,
    ITEM_CATEGORIES_FILE,
    QUERY_ITEMS_DIR,
    SCHEMA_FILE,
    SEARCH_TRAIN,
    SPLITS,
    STATS_FILE,
    VOCAB_DIR,
    schema_path,
    vocab_path,
)

PAD_ID = -1
PAD_KEY = b""

# --- feature names -------------------------------------------------------------------------
LABEL = "label"                                   # int64 [] click (1) or not (0) on the impression
TIMESTAMP = "timestamp"                           # int64 [] ms of the impression: a model
                                                  # input (query ages are computed from it)
DOMAIN = "domain"                                 # int64 [] FEED_DOMAIN or SEARCH_DOMAIN
USER_ID = "user_id"                               # int64 []
ITEM_ID = "item_id"                               # int64 [] the target (candidate) item
SEARCH_ACTIVE_LEVEL = "search_active_level"       # int64 [] user feature
REC_ACTIVE_LEVEL = "rec_active_level"             # int64 [] user feature
ONEHOT_FEAT1 = "onehot_feat1"                     # int64 [] user feature
ONEHOT_FEAT2 = "onehot_feat2"                     # int64 [] user feature
AUTHOR_ID = "author_id"                           # int64 [] item feature
CATEGORY_ID = "category_id"                       # int64 [] item first-level category
SUBCATEGORY_ID = "subcategory_id"                 # int64 [] item second-level category
HIST_ITEM_IDS = "hist_item_ids"                   # int64 [history] feed-clicked items before t
HIST_CATEGORY_IDS = "hist_category_ids"           # int64 [history] their first-level categories
HIST_SUBCATEGORY_IDS = "hist_subcategory_ids"     # int64 [history] their second-level categories
QUERY_KEYS = "query_keys"                         # string [queries] queries issued before t
QUERY_WORD_IDS = "query_word_ids"                 # int64 [queries, query_words]
QUERY_CLICKED_ITEM_IDS = "query_clicked_item_ids" # int64 [queries, query_clicked_items] items
                                                  # clicked in each query's session (SESRec)
QUERY_TIMESTAMPS = "query_timestamps"             # int64 [queries] ms of each query's session
QUERY_CATEGORY_IDS = "query_category_ids"         # int64 [queries] the first-level category most
                                                  # of the session's results belong to
QUERY_SUBCATEGORY_IDS = "query_subcategory_ids"   # int64 [queries] the same, second level
NIP_POS_ITEM_IDS = "nip_pos_item_ids"             # int64 [nip_pos] train clicks after t
NIP_NEG_ITEM_IDS = "nip_neg_item_ids"             # int64 [nip_neg] train non-clicks after t

# The impression an example describes: a feed impression (every split) or, in search_train/ only,
# a search impression (the auxiliary task of multi-task models such as PLE).
FEED_DOMAIN = 0
SEARCH_DOMAIN = 1

# --- vocabularies (files <data>/vocab/<name>.txt, "value<TAB>count", most frequent first) -----
VOCAB_USERS = "users"
VOCAB_ITEMS = "items"
VOCAB_QUERIES = "queries"
VOCAB_WORDS = "words"
VOCAB_CATEGORIES = "categories"
VOCAB_SUBCATEGORIES = "subcategories"
VOCAB_AUTHORS = "authors"
VOCAB_SEARCH_ACTIVE_LEVELS = "search_active_levels"
VOCAB_REC_ACTIVE_LEVELS = "rec_active_levels"
VOCAB_ONEHOT_FEAT1 = "onehot_feat1"
VOCAB_ONEHOT_FEAT2 = "onehot_feat2"
VOCABULARIES = (
    VOCAB_USERS, VOCAB_ITEMS, VOCAB_QUERIES, VOCAB_WORDS, VOCAB_CATEGORIES, VOCAB_SUBCATEGORIES,
    VOCAB_AUTHORS, VOCAB_SEARCH_ACTIVE_LEVELS, VOCAB_REC_ACTIVE_LEVELS, VOCAB_ONEHOT_FEAT1,
    VOCAB_ONEHOT_FEAT2,
)

# --- query -> items table (<data>/query_items/*.tfrecord.gz), variable-length lists ----------
QI_QUERY_KEY = "query_key"                        # string []
QI_WORD_IDS = "word_ids"                          # int64 [None] all the query's words
QI_CLICKED_ITEM_IDS = "clicked_item_ids"          # int64 [None] clicked after the query
QI_CLICK_COUNTS = "click_counts"                  # int64 [None] clicks per clicked item
QI_UNCLICKED_ITEM_IDS = "unclicked_item_ids"      # int64 [None] shown, never clicked
QI_SESSIONS = "sessions"                          # int64 [] search sessions with this query

@dataclasses.dataclass(frozen=True)
class Feature:
    """One example feature: how it is stored, parsed, padded and looked up.

    Attributes:
      name: the key in tf.Example, in `qrec_tf.data` batches and in serving signatures.
      dtype: "int64" or "string".
      shape: per-example shape; () for a scalar.
      vocab: the vocabulary (under `vocab/`) that maps its raw values to indices, or None.
      group: what the feature describes: "label", "context" (never a model input), "request"
        (the impression's time: a model input, sent once per user when scoring candidates),
        "user", "item", "history", "query", or "nip" (training-only targets).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    vocab: str | None
    group: str

    @property
    def tf_dtype(self) -> tf.DType:
        return tf.int64 if self.dtype == "int64" else tf.string

    @property
    def pad(self) -> int | bytes:
        return PAD_ID if self.dtype == "int64" else PAD_KEY

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class SchemaMismatch(ValueError):
    """Data written with another feature set than this code's schema declares."""


@dataclasses.dataclass(frozen=True)
class Schema:
    """Sequence lengths of a dataset, and from them every feature's spec.

    The Beam job writes the lengths it used to `<data>/schema.json`; `Schema.load(data_dir)`
    reads them back, so training always parses with the lengths the data was written with.
    """

    history_length: int = 50
    max_queries: int = 20
    max_query_words: int = 8
    nip_positives: int = 5
    nip_negatives: int = 5
    query_clicked_items: int = 3

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Schema.{field.name} must be a positive integer, got {value!r}")

    # --- the features ----------------------------------------------------------------------
    @functools.cached_property
    def features(self) -> tuple[Feature, ...]:
        h, q, w = self.history_length, self.max_queries, self.max_query_words
        return (
            Feature(LABEL, "int64", (), None, "label"),
            Feature(TIMESTAMP, "int64", (), None, "request"),
            Feature(DOMAIN, "int64", (), None, "context"),
            Feature(USER_ID, "int64", (), VOCAB_USERS, "user"),
            Feature(SEARCH_ACTIVE_LEVEL, "int64", (), VOCAB_SEARCH_ACTIVE_LEVELS, "user"),
            Feature(REC_ACTIVE_LEVEL, "int64", (), VOCAB_REC_ACTIVE_LEVELS, "user"),
            Feature(ONEHOT_FEAT1, "int64", (), VOCAB_ONEHOT_FEAT1, "user"),
            Feature(ONEHOT_FEAT2, "int64", (), VOCAB_ONEHOT_FEAT2, "user"),
            Feature(ITEM_ID, "int64", (), VOCAB_ITEMS, "item"),
            Feature(AUTHOR_ID, "int64", (), VOCAB_AUTHORS, "item"),
            Feature(CATEGORY_ID, "int64", (), VOCAB_CATEGORIES, "item"),
            Feature(SUBCATEGORY_ID, "int64", (), VOCAB_SUBCATEGORIES, "item"),
            Feature(HIST_ITEM_IDS, "int64", (h,), VOCAB_ITEMS, "history"),
            Feature(HIST_CATEGORY_IDS, "int64", (h,), VOCAB_CATEGORIES, "history"),
            Feature(HIST_SUBCATEGORY_IDS, "int64", (h,), VOCAB_SUBCATEGORIES, "history"),
            Feature(QUERY_KEYS, "string", (q,), VOCAB_QUERIES, "query"),
            Feature(QUERY_WORD_IDS, "int64", (q, w), VOCAB_WORDS, "query"),
            Feature(QUERY_CLICKED_ITEM_IDS, "int64", (q, self.query_clicked_items), VOCAB_ITEMS,
                    "query"),
            Feature(QUERY_TIMESTAMPS, "int64", (q,), None, "query"),
            Feature(QUERY_CATEGORY_IDS, "int64", (q,), VOCAB_CATEGORIES, "query"),
            Feature(QUERY_SUBCATEGORY_IDS, "int64", (q,), VOCAB_SUBCATEGORIES, "query"),
            Feature(NIP_POS_ITEM_IDS, "int64", (self.nip_positives,), VOCAB_ITEMS, "nip"),
            Feature(NIP_NEG_ITEM_IDS, "int64", (self.nip_negatives,), VOCAB_ITEMS, "nip"),
        )

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r}; the schema has {self.feature_names}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def group(self, *groups: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.group in groups)

    @property
    def model_features(self) -> tuple[Feature, ...]:
        """What a served model reads: everything but the label and the training-only targets."""
        return tuple(f for f in self.features if f.group not in ("label", "nip", "context"))

    # --- parsing and writing ---------------------------------------------------------------
    def parse_spec(self, names: Iterable[str] | None = None) -> dict[str, tf.io.FixedLenFeature]:
        """The tf.io.parse_example spec; every feature is required (the Beam job pads)."""
        chosen = self.features if names is None else [self.feature(n) for n in names]
        return {f.name: tf.io.FixedLenFeature(f.shape, f.tf_dtype) for f in chosen}

    def tensor_specs(self, features: Iterable[Feature] | None = None,
                     batch_size: int | None = None) -> dict[str, tf.TensorSpec]:
        chosen = self.model_features if features is None else tuple(features)
        return {f.name: tf.TensorSpec((batch_size, *f.shape), f.tf_dtype, name=f.name)
                for f in chosen}

    def padding_batch(self, rows: int = 1, features: Iterable[Feature] | None = None
                      ) -> dict[str, tf.Tensor]:
        """Each feature (default: the model features) [rows, *shape] filled with its padding
        value: what builds a model's variables without reading any data."""
        chosen = self.model_features if features is None else tuple(features)
        return {f.name: tf.fill((rows, *f.shape), tf.constant(f.pad, f.tf_dtype))
                for f in chosen}

    def to_example(self, values: Mapping[str, Any]) -> bytes:
        """Serializes one example; `values` must hold every feature at its exact size.

        Sequences may be given nested (query_word_ids as [queries][words]) or flat; strings as
        str or bytes. For many examples, `ExampleSerializer` is faster.
        """
        return ExampleSerializer(self).serialize(values)

    # --- persistence -----------------------------------------------------------------------
    def to_json(self, lineage: Mapping[str, Any] | None = None) -> str:
        """The sequence lengths, and the features they give (so that data written by another
        version of this module is recognised when it is read, instead of failing in the parser);
        with `lineage`, which build wrote the data and which one it extends (`read_lineage`)."""
        values: dict[str, Any] = dataclasses.asdict(self)
        values["features"] = [[f.name, f.dtype, list(f.shape)] for f in self.features]
        if lineage is not None:
            values[LINEAGE] = dict(lineage)
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        values = json.loads(text)
        written = values.pop("features", None)
        values.pop(LINEAGE, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown schema fields {sorted(unknown)}; known: {sorted(known)}")
        schema = cls(**values)
        expected = [[f.name, f.dtype, list(f.shape)] for f in schema.features]
        if written is None:
            raise SchemaMismatch(
                "the data was written by an older version of pipelines.build_tfrecords (its "
                "schema.json lists no features): run `python -m pipelines.build_tfrecords` again "
                "with this version")
        if written != expected:
            missing = sorted({w[0] for w in expected} - {w[0] for w in written})
            extra = sorted({w[0] for w in written} - {w[0] for w in expected})
            raise SchemaMismatch(
                "the data was written with other features than this version of qrec_tf reads "
                f"(missing: {missing or 'none'}; not read: {extra or 'none'}; or other shapes): "
                "run `python -m pipelines.build_tfrecords` again with this version")
        return schema

    @classmethod
    def load(cls, data_dir: str) -> "Schema":
        return load_with_lineage(data_dir)[0]


# schema.json's record of the build (pipelines.build_tfrecords): {"build_id": this build's id,
# "extends": the build id of --previous-data or None, "previous_data": its path or None,
# "vocab_sizes": {vocabulary: values}, "vocab_fingerprints": {vocabulary: sha256 of its values in
# index order}}. A model records the lineage of the data it was trained on (qrec_tf.train).
LINEAGE = "lineage"


def load_with_lineage(data_dir: str) -> tuple[Schema, dict | None]:
    """The schema and the lineage of <data_dir>/schema.json, from one read of the file (the one
    reader of it: `Schema.load`, `read_lineage` and `qrec_tf.data_dir.DataDirectory` use it)."""
    path = schema_path(data_dir)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {data_dir!r} the output directory of "
            "`python -m pipelines.build_tfrecords`?")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    return Schema.from_json(text), json.loads(text).get(LINEAGE)


def read_lineage(data_dir: str) -> dict | None:
    """The lineage in <data_dir>/schema.json, or None for data written without one."""
    return load_with_lineage(data_dir)[1]


def vocab_fingerprint(values: Iterable[str]) -> str:
    """sha256 (hex) of a vocabulary's values in index order: equal iff the same ids get the same
    indices. Values as written in vocab/<name>.txt (strings)."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(str(value).encode("utf-8") + b"\n")
    return digest.hexdigest()


class ExampleSerializer:
    """Serializes examples of one schema to tf.train.Example bytes, fast.

    Runs once per impression (millions), so the feature layout is resolved once, and a sequence
    feature whose value is the *same list object* as in the previous call is not encoded again:
    consecutive examples of a user share their history and queries until a new event passes, and
    the example builder passes the same lists for them.
    """

    def __init__(self, schema: Schema):
        self._layout = tuple((f.name, f.dtype == "int64", len(f.shape), f.size)
                             for f in schema.features)
        self._last: dict[str, tuple[Any, example_pb2.Feature]] = {}

    def serialize(self, values: Mapping[str, Any]) -> bytes:
        example = example_pb2.Example()
        out = example.features.feature
        for name, is_int, rank, size in self._layout:
            value = values[name]
            if rank == 0:
                if is_int:
                    out[name].int64_list.value.append(value)
                else:
                    out[name].bytes_list.value.append(
                        value.encode("utf-8") if isinstance(value, str) else value)
                continue
            last = self._last.get(name)
            if last is not None and last[0] is value:
                out[name].CopyFrom(last[1])
                continue
            flat = value
            if rank == 2 and value and isinstance(value[0], (list, tuple)):
                flat = [v for row in value for v in row]
            if len(flat) != size:
                raise ValueError(f"{name}: expected {size} values, got {len(flat)}")
            feature = out[name]
            if is_int:
                feature.int64_list.value.extend(flat)
            elif flat and isinstance(flat[0], str):
                feature.bytes_list.value.extend(v.encode("utf-8") for v in flat)
            else:
                feature.bytes_list.value.extend(flat)
            self._last[name] = (value, feature)
        # deterministic: features in key order (a map's order otherwise varies between
        # processes), so the same example gives the same bytes on any runner and in any run.
        return example.SerializeToString(deterministic=True)


# The query -> items table (variable-length lists).
QUERY_ITEMS_SPEC = {
    QI_QUERY_KEY: tf.io.FixedLenFeature((), tf.string),
    QI_WORD_IDS: tf.io.VarLenFeature(tf.int64),
    QI_CLICKED_ITEM_IDS: tf.io.VarLenFeature(tf.int64),
    QI_CLICK_COUNTS: tf.io.VarLenFeature(tf.int64),
    QI_UNCLICKED_ITEM_IDS: tf.io.VarLenFeature(tf.int64),
    QI_SESSIONS: tf.io.FixedLenFeature((), tf.int64),
}


def query_items_example(query_key: str, word_ids: Iterable[int], clicked: Mapping[int, int],
                        unclicked: Iterable[int], sessions: int) -> bytes:
    """Serializes one row of the query -> items table; items are sorted for reproducibility."""
    example = example_pb2.Example()
    out = example.features.feature
    out[QI_QUERY_KEY].bytes_list.value.append(query_key.encode("utf-8"))
    out[QI_WORD_IDS].int64_list.value.extend(word_ids)
    clicked_items = sorted(clicked)
    out[QI_CLICKED_ITEM_IDS].int64_list.value.extend(clicked_items)
    out[QI_CLICK_COUNTS].int64_list.value.extend(clicked[i] for i in clicked_items)
    out[QI_UNCLICKED_ITEM_IDS].int64_list.value.extend(sorted(unclicked))
    out[QI_SESSIONS].int64_list.value.append(sessions)
    return example.SerializeToString(deterministic=True)  # key order, as ExampleSerializer


def read_vocab(data_dir: str, vocab: str) -> list[tuple[str, int]]:
    """[(value, count)] in file order (most frequent first)."""
    path = vocab_path(data_dir, vocab)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"vocabulary {path} not found (run pipelines.build_tfrecords)")
    rows = []
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            value, count = line.rstrip("\n").split("\t")
            rows.append((value, int(count)))
    return rows
