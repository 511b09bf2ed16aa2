"""Runner choice, Beam option pass-through, and outputs that do not depend on the run."""

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability import prism_runner
from apache_beam.runners.runner import create_runner
from tensorflow.core.example import example_pb2

from pipelines import analysis, beam_support, build_tfrecords
from qrec_tf import schema as S
from tests.pipelines import hand_log
from tests.pipelines.test_build_tfrecords import SMALL


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("job", [build_tfrecords, analysis])
def test_help_lists_the_jobs_flags_and_names_the_local_runner(job, capsys):
    with pytest.raises(SystemExit) as exit_info:
        job.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--input INPUT" in out and "--output OUTPUT" in out and "--overwrite" in out
    assert "Other flags must be Beam pipeline options" in out
    assert ("--runner=pipelines.beam_support.LocalRunner --direct_running_mode=in_memory"
            in out)


def test_beam_options_pass_through_and_a_runner_replaces_the_local_defaults():
    portable = ["--runner=PortableRunner", "--job_endpoint=localhost:1",
                "--environment_type=EXTERNAL", "--environment_config=localhost:2"]
    args, beam_args = build_tfrecords.parse_args(
        ["--input", "in", "--output", "out", *portable[:2], "--num-shards", "4", *portable[2:]])
    assert (args.input, args.output, args.num_shards) == ("in", "out", 4)
    assert beam_args == portable
    args, beam_args = analysis.parse_args(["--input", "in", "--output", "out",
                                           "--job_name=qrec"])
    assert beam_args == [*beam_support.LOCAL_DEFAULTS, "--job_name=qrec"]
    with pytest.raises(beam_support.InputError, match="unrecognized arguments: --some_flag=1"):
        analysis.parse_args(["--input", "in", "--output", "out", "--some_flag=1"])
    assert PipelineOptions(beam_args).get_all_options()["runner"] == beam_support.LOCAL_RUNNER
    assert isinstance(create_runner(beam_support.LOCAL_RUNNER), beam_support.LocalRunner)


def test_examples_are_serialized_in_key_order():
    schema = S.Schema(history_length=2, max_queries=1, max_query_words=1, nip_positives=1,
                      nip_negatives=1, query_clicked_items=1)
    values = {f.name: ([0] * f.size if f.dtype == "int64" else [""] * f.size) if f.shape
              else (0 if f.dtype == "int64" else "") for f in schema.features}
    data = S.ExampleSerializer(schema).serialize(values)
    # Rebuilt with the features inserted in reverse order: the same bytes.
    parsed = example_pb2.Example.FromString(data)
    reverse = example_pb2.Example()
    for name in reversed(list(parsed.features.feature)):
        reverse.features.feature[name].CopyFrom(parsed.features.feature[name])
    assert data == reverse.SerializeToString(deterministic=True)
    row = S.query_items_example("7_8", [7, 8], {3: 1, 2: 5}, [9], 2)
    assert row == example_pb2.Example.FromString(row).SerializeToString(deterministic=True)


def test_sorted_shards_do_not_depend_on_the_input_order(tmp_path):
    records = [f"record {i}".encode() for i in range(7)]
    for name, order in (("a", records), ("b", records[::-1])):
        (tmp_path / name).mkdir()
        with beam.Pipeline(beam_support.LocalRunner()) as p:
            _ = (p | beam.Create(order)
                 | beam_support.WriteSortedShards(str(tmp_path / name / "part"), 3))
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert sorted(a) == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert a == b
    written = [beam_support.shard_of(r, 3) for r in records]
    assert sorted(written) == sorted(beam_support.shard_of(r, 3) for r in records[::-1])


@pytest.mark.slow
def test_two_runs_give_byte_identical_shards_without_trying_prism(tmp_path, monkeypatch):
    prism_calls = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline",
                        lambda *a, **k: prism_calls.append(a))
    hand_log.write(tmp_path / "in")
    for run in ("one", "two"):
        build_tfrecords.run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / run),
                             *SMALL, "--num-shards", "3"])
    assert prism_calls == []
    one, two = tree(tmp_path / "one" / "train"), tree(tmp_path / "two" / "train")
    assert sorted(one) == [f"train-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert one == two
    for split in ("valid", "test"):
        assert tree(tmp_path / "one" / split) == tree(tmp_path / "two" / split)
