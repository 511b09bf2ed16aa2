"""Random vocabularies and raw-feature batches, for tests and benchmarks without a data directory.

Everything follows `qrec_tf.schema`: a batch holds every feature of the schema (raw ids drawn from
the vocabularies, sequences with left padding), so a model built on these vocabularies accepts it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from qrec_tf import schema as S
from qrec_tf.models.base import Vocabularies


def random_vocabularies(n_items: int, n_words: int = 1000) -> Vocabularies:
    """Vocabularies for a catalogue of `n_items` items; users, queries and authors scale with it."""

    def ids(n: int, base: int = 1) -> list[int]:
        return list(range(base, base + n))

    values = {
        S.VOCAB_USERS: ids(max(n_items // 10, 10)), S.VOCAB_ITEMS: ids(n_items, 10**6),
        S.VOCAB_QUERIES: [str(i) for i in range(max(n_items // 10, 10))],
        S.VOCAB_WORDS: ids(n_words), S.VOCAB_CATEGORIES: ids(40),
        S.VOCAB_SUBCATEGORIES: ids(300), S.VOCAB_AUTHORS: ids(max(n_items // 4, 10)),
        S.VOCAB_SEARCH_ACTIVE_LEVELS: ids(5), S.VOCAB_REC_ACTIVE_LEVELS: ids(5),
        S.VOCAB_ONEHOT_FEAT1: ids(3), S.VOCAB_ONEHOT_FEAT2: ids(8)}
    # Most frequent first, as the Beam job writes them (model.embedding_l2 reads the counts).
    counts = {vocab: list(range(len(v), 0, -1)) for vocab, v in values.items()}
    return Vocabularies(values, counts)


def random_batch(schema: S.Schema, vocabularies: Vocabularies, batch_size: int,
                 rng: np.random.Generator, min_length: int = 1) -> tuple[dict, np.ndarray]:
    """(features {name: array [batch, *shape]}, labels int [batch]) with raw ids.

    Each sequence gets a random number of real entries (>= `min_length`) at its right end and is
    left-padded with the schema's padding value, as the Beam job writes them.
    """
    features = {}
    real_lengths: dict[tuple[str, int], np.ndarray] = {}   # one length per (group, max length)
    for f in schema.features:
        if f.name == S.LABEL:
            continue
        shape = (batch_size, *f.shape)
        if f.vocab is None:
            features[f.name] = rng.integers(0, 10**12, shape)
            continue
        values = np.asarray(vocabularies.values[f.vocab],
                            dtype=object if f.dtype == "string" else np.int64)
        drawn = values[rng.integers(0, len(values), shape)]
        if f.shape:
            length = f.shape[0]
            real = real_lengths.setdefault(
                (f.group, length), rng.integers(min(min_length, length), length + 1, batch_size))
            padded = np.arange(length)[None, :] < (length - real)[:, None]   # [batch, length]
            drawn[padded] = f.pad.decode() if f.dtype == "string" else f.pad
        features[f.name] = drawn.astype(bytes) if f.dtype == "string" else drawn
    _words_follow_keys(features, vocabularies, schema.max_query_words)
    _queries_before_the_impression(features, rng)
    return features, rng.integers(0, 2, batch_size)


def _queries_before_the_impression(features: dict, rng: np.random.Generator) -> None:
    """Impression times in a 10-day span of ms, and every real query slot at an age of up to 20
    days before it, older slots first (as the Beam job writes them); PAD_ID on padding."""
    start = 1_684_684_800_000
    timestamps = start + rng.integers(0, 10 * 86_400_000, len(features[S.TIMESTAMP]))
    features[S.TIMESTAMP] = timestamps
    ages = np.sort(rng.integers(0, 20 * 86_400_000, features[S.QUERY_TIMESTAMPS].shape),
                   axis=1)[:, ::-1]
    real = features[S.QUERY_KEYS] != S.PAD_KEY
    features[S.QUERY_TIMESTAMPS] = np.where(real, timestamps[:, None] - ages, S.PAD_ID)


def _words_follow_keys(features: dict, vocabularies: Vocabularies, n_words: int) -> None:
    """Gives every query key the same word ids wherever it occurs, as in the Beam job's output
    (both come from the query's text): each key of the vocabulary has a fixed random word list."""
    keys = features[S.QUERY_KEYS]
    vocab = vocabularies.values[S.VOCAB_QUERIES]
    words = np.asarray(vocabularies.values[S.VOCAB_WORDS], np.int64)
    table = words[np.random.default_rng(len(vocab)).integers(0, len(words),
                                                             (len(vocab), n_words))]
    row = {key.encode(): i for i, key in enumerate(vocab)}
    for index in zip(*np.nonzero(keys != S.PAD_KEY)):
        features[S.QUERY_WORD_IDS][index] = table[row[keys[index]]]


def random_data_constants(config, vocabularies: Vocabularies, seed: int = 0) -> dict:
    """What a model's `data_constants` would read from a data directory, drawn at random for
    `config` (a ModelConfig): the contrastive positives (item indices per query row) and the
    items' categories (raw ids per item row), each only when the config uses it."""
    rng = np.random.default_rng(seed)
    constants, din = {}, config.section_named("din")
    if din is None:
        return constants
    if din.contrastive_weight:
        rows = vocabularies.size(S.VOCAB_QUERIES)
        constants["query_positives"] = rng.integers(
            2, vocabularies.size(S.VOCAB_ITEMS), (rows, din.contrastive_positives))
    if din.query_item_context or din.search_match:
        rows = vocabularies.size(S.VOCAB_ITEMS)
        constants["item_categories"] = np.stack(
            [rng.choice(vocabularies.values[vocab], rows)
             for vocab in (S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES, S.VOCAB_AUTHORS)],
            1).astype(np.int64)
    return constants


def variable_readers(function: Callable, variable) -> set[str]:
    """The types of the ops that read `variable` (a Keras or tf variable) in the graph that the
    tf.function `function` traces without arguments: {"ResourceGather"} when it reads rows
    only, "ReadVariableOp" when it reads the whole variable."""
    handle = (variable.value if hasattr(variable, "path") else variable).handle   # Keras: .value
    graph = function.get_concrete_function().graph
    internal = next(inner for outer, inner in graph.captures if outer is handle)
    return {consumer.type for consumer in internal.consumers()}

