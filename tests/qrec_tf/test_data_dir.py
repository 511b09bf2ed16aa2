"""The loaded data directory (qrec_tf.data_dir): each file read once, whoever asks; one training
run (and a warm-started one) reads schema.json, stats.json and each vocabulary once."""

import builtins
import collections
import json
import os

import pytest
import tensorflow as tf

from benchmarks.data_directory_reads import open_counters
from qrec_tf import schema as S
from qrec_tf import train
from qrec_tf.config import load_config
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models.registry import build_model

TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=256", "train.shuffle_buffer=500", "train.epochs=1"]


def count_opens(monkeypatch, root: str) -> collections.Counter:
    """Every open of a file under `root` from now on, by its path relative to `root`: through
    tf.io.gfile.GFile (how the project reads the data) and builtins.open."""
    opened, gfile, open_ = open_counters(root)
    monkeypatch.setattr(tf.io.gfile, "GFile", gfile)
    monkeypatch.setattr(builtins, "open", open_)
    return opened


def test_one_training_run_reads_schema_and_stats_once_each(data_dir, tmp_path, monkeypatch):
    """queryrec (contrastive positives, query side) with the mini-batch aware L2, from a path
    given as --data is: schema.json and stats.json once each,
    every vocabulary once; and a warm start from that run (which builds the previous model on
    the same data) reads them once too. Before the data directory was one object, schema.json
    was read 5 times in such a run and stats.json 2 times (docs/RESULTS.md, issue 34 part B)."""
    config = load_config("configs/queryrec.yaml", [*TINY, "model.embedding_l2=0.1"])
    for run, warm_start in (("first", None), ("warm", str(tmp_path / "first"))):
        opened = count_opens(monkeypatch, data_dir)
        summary = train.train(config, data_dir, str(tmp_path / run), verbose=0,
                              warm_start_dir=warm_start)
        monkeypatch.undo()
        assert summary["epochs_run"] == 1
        assert (opened[S.SCHEMA_FILE], opened[S.STATS_FILE]) == (1, 1), (run, opened)
        vocabularies = {os.path.join(S.VOCAB_DIR, f"{v}.txt"): 1 for v in S.VOCABULARIES}
        assert {k: n for k, n in opened.items() if k.startswith(S.VOCAB_DIR)} == vocabularies
        assert all(n == 1 for n in opened.values()), (run, opened)


def test_a_loaded_directory_reads_each_file_once_for_every_model(data_dir, monkeypatch):
    """Two models built on one DataDirectory (what a warm start does) and every question asked
    twice: each file is opened once; `of` passes a loaded directory on as it is."""
    opened = count_opens(monkeypatch, data_dir)
    data = DataDirectory(data_dir)
    assert DataDirectory.of(data) is data and DataDirectory.of(data_dir) is not data
    for name in ("din_query", "queryrec"):   # both read item_categories.tsv (search_match)
        build_model(load_config(f"configs/{name}.yaml",
                                [*TINY, "model.search_match=true"]).model, data)
    with open(os.path.join(data_dir, S.STATS_FILE)) as f:   # counted too: one more below
        counts = json.load(f)["examples"]
    assert [data.split_size(s) for s in S.EXAMPLE_SPLITS] == [
        counts[s]["count"] for s in S.EXAMPLE_SPLITS]
    assert data.split_size("no_such_split") is None
    assert data.schema is data.schema
    lineage = data.lineage
    monkeypatch.undo()
    assert lineage == S.read_lineage(data_dir) and lineage["build_id"]
    assert opened[S.SCHEMA_FILE] == 1 and opened[S.STATS_FILE] == 2
    assert opened[S.ITEM_CATEGORIES_FILE] == 1
    assert all(opened[os.path.join(S.VOCAB_DIR, f"{v}.txt")] == 1 for v in S.VOCABULARIES)


def test_missing_or_foreign_files_say_to_rebuild(tmp_path):
    bare = DataDirectory(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pipelines.build_tfrecords"):
        bare.schema
    assert bare.split_size("train") is None and bare.stats is None   # no stats.json: unknown
    with pytest.raises(FileNotFoundError, match="rebuild .* pipelines.build_tfrecords"):
        bare.item_categories([1, 2])
    with pytest.raises(FileNotFoundError, match="vocab/items.txt not found"):
        bare.vocab(S.VOCAB_ITEMS)
    values = json.loads(S.Schema().to_json())
    values["features"] = values["features"][:-1]          # data of another version
    (tmp_path / S.SCHEMA_FILE).write_text(json.dumps(values))
    with pytest.raises(S.SchemaMismatch, match="run `python -m pipelines.build_tfrecords`"):
        DataDirectory(str(tmp_path)).schema


def test_item_categories_by_hand(tmp_path):
    """One parse of item_categories.tsv serves any item vocabulary: rows 0 and 1 (padding, OOV)
    and an item without a line are PAD_ID; a later line of an item wins."""
    (tmp_path / S.ITEM_CATEGORIES_FILE).write_text("10\t5\t51\t7\n20\t2\t21\t8\n10\t6\t61\t9\n")
    data = DataDirectory(str(tmp_path))
    assert data.item_categories([20, 10, 30]).tolist() == [
        [-1, -1, -1], [-1, -1, -1], [2, 21, 8], [6, 61, 9], [-1, -1, -1]]
    assert data.item_categories([10]).tolist() == [[-1, -1, -1], [-1, -1, -1], [6, 61, 9]]
