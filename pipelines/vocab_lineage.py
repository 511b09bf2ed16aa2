"""Stable vocabularies across builds (`build_tfrecords --previous-data DIR`) and the lineage that
schema.json records.

The rule (docs/ARCHITECTURE.md, "Continuous training"):
- every value of DIR's vocabulary keeps its line, so its index (`layers.id_lookup`: 2 + line)
  is the same in the new build, whether or not it occurs in the new logs and whatever its count;
- values seen for the first time are appended after them, most frequent first (the order of a
  fresh build), if they pass `--min-count`;
- counts are a decayed sum: count = round(decay * previous count) + count in this build
  (`--vocab-decay`, default 0.5: a build's counts weigh half in the next one, a quarter in the
  one after), so the counts that DIN's MBA regulariser and the popularity baseline read follow
  recent logs while no index moves.
A fresh build (no DIR) writes every vocabulary most frequent first, as before.

Lineage: schema.json's "lineage" holds this build's id (a hash of its vocabularies and of the
build it extends), the id and path of DIR's build, and per vocabulary its size and fingerprint
(`schema.vocab_fingerprint`). A model directory records the lineage it was trained on, and
`check_model_data` turns a model/data mismatch into one clear message.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines.beam_support import InputError
from qrec_tf import schema as S

DEFAULT_DECAY = 0.5
Rows = list[tuple[str, int]]


def merge_rows(previous: Sequence[tuple[str, int]], current: Iterable[tuple[str, int]],
               decay: float, min_count: int, sort_key: Callable) -> tuple[Rows, int]:
    """(rows of the new vocabulary, how many were appended).

    `previous`: DIR's rows in file (index) order; `current`: (value, count) of this build, any
    order, before `min_count`. Old values keep their position (min_count does not drop them);
    new ones with count >= min_count follow, ordered by `sort_key` (most frequent first)."""
    counts = dict(current)
    rows = [(value, int(decay * count + 0.5) + counts.pop(value, 0)) for value, count in previous]
    appended = sorted(((v, c) for v, c in counts.items() if c >= min_count), key=sort_key)
    return rows + appended, len(appended)


def read_rows(path: str) -> Rows:
    """"value<TAB>count" lines of a vocabulary file, in file order (any Beam filesystem)."""
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        value, count = line.split("\t")
        rows.append((value, int(count)))
    return rows


def write_rows(path: str, rows: Rows) -> None:
    with FileSystems.create(path) as f:
        f.write("".join(f"{value}\t{count}\n" for value, count in rows).encode("utf-8"))


def vocab_file(data_dir: str, vocab: str) -> str:
    return FileSystems.join(data_dir, S.VOCAB_DIR, vocab + ".txt")


def read_schema_json(data_dir: str) -> dict:
    path = FileSystems.join(data_dir, S.SCHEMA_FILE)
    if not FileSystems.exists(path):
        raise InputError(f"--previous-data {data_dir}: {S.SCHEMA_FILE} not found (is it the "
                         "--output of an earlier pipelines.build_tfrecords run?)")
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def load_previous(data_dir: str, schema: S.Schema) -> tuple[dict[str, Rows], dict]:
    """({vocabulary: rows}, the previous build's lineage) of --previous-data, after checking
    that it was written with the same sequence lengths (a warm-started model must read both)."""
    text = json.dumps(read_schema_json(data_dir))
    try:
        previous_schema = S.Schema.from_json(text)
    except ValueError as error:
        raise InputError(f"--previous-data {data_dir}: {error}") from None
    if previous_schema != schema:
        raise InputError(f"--previous-data {data_dir} was built with other sequence lengths "
                         f"({previous_schema}) than this run ({schema}): pass the same "
                         "--history-length/--max-queries/... flags")
    vocabularies = {}
    for vocab in S.VOCABULARIES:
        path = vocab_file(data_dir, vocab)
        if not FileSystems.exists(path):
            raise InputError(f"--previous-data {data_dir}: {path} not found")
        vocabularies[vocab] = read_rows(path)
    lineage = json.loads(text).get(S.LINEAGE) or lineage_of(vocabularies, None, None)
    return vocabularies, lineage


def lineage_of(vocabularies: Mapping[str, Rows], extends: str | None,
               previous_data: str | None) -> dict:
    """The lineage record of a build with these vocabularies (see the module docstring)."""
    fingerprints = {vocab: S.vocab_fingerprint(v for v, _ in rows)
                    for vocab, rows in sorted(vocabularies.items())}
    build_id = hashlib.sha256(json.dumps([fingerprints, extends]).encode()).hexdigest()[:16]
    return {"build_id": build_id, "extends": extends, "previous_data": previous_data,
            "vocab_sizes": {vocab: len(rows) for vocab, rows in sorted(vocabularies.items())},
            "vocab_fingerprints": fingerprints}


def finish_vocabularies(staging: str, previous: Mapping[str, Rows] | None, decay: float,
                        previous_lineage: dict | None, previous_data: str | None) -> dict:
    """After the pipeline: writes the vocabularies that this build's logs hold no value of (with
    --previous-data, their old rows, decayed; else empty files), reads every vocabulary back and
    returns this build's lineage."""
    vocabularies = {}
    for vocab in S.VOCABULARIES:
        path = vocab_file(staging, vocab)
        if not FileSystems.exists(path):
            old = previous.get(vocab, []) if previous else []
            write_rows(path, merge_rows(old, [], decay, 1, lambda row: row)[0])
        vocabularies[vocab] = read_rows(path)
    return lineage_of(vocabularies, previous_lineage["build_id"] if previous_lineage else None,
                      previous_data)

