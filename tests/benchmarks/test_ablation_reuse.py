"""benchmarks.ablation --reuse keeps a work directory: it reuses matching data and refuses,
without deleting anything, when the log was made with other arguments."""

import argparse
import json

import pytest

from benchmarks import ablation


def parse(*argv):
    parser = argparse.ArgumentParser()
    ablation.add_arguments(parser, ["din"], "unused")
    return parser.parse_args(list(argv))


def test_reuse_with_other_log_arguments_stops_and_deletes_nothing(tmp_path):
    made = parse("--users", "3000", "--workdir", str(tmp_path))
    (tmp_path / "log_arguments.json").write_text(json.dumps(ablation._log_arguments(made)))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kept.txt").write_text("a finished run")
    with pytest.raises(SystemExit, match=r"users 3000 \(asked: 4000\)"):
        ablation.prepare_data(parse("--users", "4000", "--reuse", "--workdir", str(tmp_path)))
    assert (tmp_path / "models" / "kept.txt").read_text() == "a finished run"


def test_reuse_with_the_same_log_arguments_returns_the_data_directory(tmp_path):
    args = parse("--users", "3000", "--reuse", "--workdir", str(tmp_path))
    (tmp_path / "log_arguments.json").write_text(json.dumps(ablation._log_arguments(args)))
    assert ablation.prepare_data(args) == str(tmp_path / "data")
