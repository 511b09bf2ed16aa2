"""The Beam job on hostile input (issue 17): cut or corrupt .csv.gz files, a repeated header
column, ids beyond int64, over-long fields, a build without training examples, and --overwrite
that must never lose the earlier outputs nor keep the augment stage's stale table."""

import gzip
import json

import pytest

from pipelines import beam_support, build_tfrecords
from qrec_tf import positives
from qrec_tf import schema as S
from tests.pipelines import hand_log
from tests.pipelines.test_build_tfrecords import EXPECTED, by_key, read_split, run_job

FAILED = "failed_run"  # StagedOutput.FAILED (a literal, so this module imports on old code)


def write_gz(directory, name, lines) -> bytes:
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)
    (directory / f"{name}.csv.gz").write_bytes(data)
    return data


def dead_letters(directory):
    return sorted((d["file"], d["reason"], d["line"])
                  for path in (directory / S.DEAD_LETTER_DIR).glob("*.jsonl")
                  for d in map(json.loads, path.read_text().splitlines()))


def assert_hand_examples(out):
    for split in S.SPLITS:
        got = by_key(read_split(out, split))
        want = {k: v for k, (s, v) in EXPECTED.items() if s == split}
        assert sorted(got) == sorted(want), split
        for key, expected in want.items():
            assert {name: got[key][name] for name in expected} == expected, (split, key)


def test_cut_or_corrupt_gzip_inputs_fail_the_job_naming_the_file(tmp_path):
    """Issue 17.1: half a rec_inter.csv.gz gave exit 0 with half its rows read."""
    inp = tmp_path / "in"
    inp.mkdir()
    # Padding rows of the dropped users 3 (feed only) and 4 (search only), so that the cut and
    # the corrupt bytes fall well after the header.
    rec = hand_log.FILES["rec_inter"] + [hand_log.rec(3, 40 + i % 50, 10_000 + i, i % 2)
                                         for i in range(3000)]
    src = hand_log.FILES["src_inter"] + [hand_log.src(4, 400 + i, 10_000 + i, [5, i % 7], 205, 0)
                                         for i in range(3000)]
    whole = gzip.compress(("\n".join(rec) + "\n").encode(), mtime=0)
    (inp / "rec_inter.csv.gz").write_bytes(whole[:len(whole) // 2])
    corrupt = bytearray(write_gz(inp, "src_inter", src))
    middle = len(corrupt) * 3 // 4
    corrupt[middle:middle + 8] = bytes(b ^ 0xFF for b in corrupt[middle:middle + 8])
    (inp / "src_inter.csv.gz").write_bytes(bytes(corrupt))
    for name in ("user_features", "item_features"):
        write_gz(inp, name, hand_log.FILES[name])

    with pytest.raises(SystemExit) as failure:
        run_job(inp, tmp_path / "out", "--max-rejected-fraction", "1.0")
    message = str(failure.value)
    assert f"rec_inter: {inp / 'rec_inter.csv.gz'} is cut short" in message
    assert f"src_inter: {inp / 'src_inter.csv.gz'} is corrupt" in message
    assert not (tmp_path / "out" / S.STATS_FILE).exists()  # never published as data
    failed = tmp_path / "out" / FAILED
    stats = json.loads((failed / S.STATS_FILE).read_text())
    assert stats["rec_inter"]["input_errors"] == {"gzip_truncated": 1}
    assert stats["src_inter"]["input_errors"] == {"gzip_corrupt": 1}
    read = stats["rec_inter"]["rows_read"]
    assert 0 < read < len(rec) - 1
    assert read == stats["rec_inter"]["rows_used"] + stats["rec_inter"]["rows_rejected"]
    errors = [d for d in dead_letters(failed) if d[1].startswith("gzip_")]
    assert [(f, r) for f, r, _ in errors] == [("rec_inter", "gzip_truncated"),
                                              ("src_inter", "gzip_corrupt")]
    assert str(inp / "rec_inter.csv.gz") in errors[0][2] and "EOFError" in errors[0][2]


def test_unreadable_gzip_headers_are_user_errors_naming_the_file(tmp_path, capsys):
    inp = hand_log.write(tmp_path / "in")
    (inp / "rec_inter.csv").unlink()
    for data, what in ((b"user_id,item_id\n1,2\n", "BadGzipFile"),          # not gzip at all
                       (gzip.compress(b"user_id,item_id,timestamp,click\n" * 50)[:20],
                        "EOFError")):                                        # cut in the header
        (inp / "rec_inter.csv.gz").write_bytes(data)
        assert build_tfrecords.main(["--input", str(inp), "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"{inp / 'rec_inter.csv.gz'} is not a readable gzip file ({what}" in err, err
        assert "Traceback" not in err


def test_a_repeated_header_column_is_a_user_error(tmp_path, capsys):
    """Issue 17.3: an extra trailing user_id column silently replaced the real one."""
    rec = [hand_log.REC_HEADER + ",user_id"] + [row + ",999" for row in hand_log.REC_ROWS]
    inp = hand_log.write(tmp_path / "in", files={**hand_log.FILES, "rec_inter": rec})
    assert build_tfrecords.main(["--input", str(inp), "--output", str(tmp_path / "out")]) == 2
    assert (f"{inp / 'rec_inter.csv'}: header repeats column(s) ['user_id']"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_build_without_training_examples_fails(tmp_path):
    """Issue 17.3: 0 users kept and 0 training examples gave exit 0."""
    # users 1 and 2 keep two feed interactions each: a valid and a test example, no train one
    rec = [hand_log.REC_HEADER, hand_log.rec(1, 11, 1000, 1), hand_log.rec(1, 12, 2000, 0),
           hand_log.rec(2, 21, 1000, 1), hand_log.rec(2, 22, 2500, 1)]
    inp = hand_log.write(tmp_path / "in", files={**hand_log.FILES, "rec_inter": rec})
    with pytest.raises(SystemExit, match=r"no training examples: 2 users kept"):
        run_job(inp, tmp_path / "out")
    assert not (tmp_path / "out" / S.STATS_FILE).exists()
    stats = json.loads((tmp_path / "out" / FAILED / S.STATS_FILE).read_text())
    assert stats["examples"]["valid"]["count"] == 2 and stats["examples"]["test"]["count"] == 2


def test_ids_beyond_int64_and_over_long_fields_are_dead_letters(tmp_path):
    """Issue 17.5 and 17.6: one id above int64 crashed the job when serialized; a quoted field
    over 131,072 characters crashed it in the csv module."""
    big = 2**63
    long_caption = "x" * 200_000                      # over csv's default limit, under ours
    too_long = "y" * (2**20 + 1)                     # over kuaisar.MAX_FIELD_CHARS
    bad = {
        "rec_inter": [(hand_log.rec(1, big, 3500, 1), "out_of_range:item_id"),
                      (hand_log.rec(big * 4, 11, 3500, 1), "out_of_range:user_id"),
                      (hand_log.rec(1, 11, 3500, 1).replace("1,11,", "1e300,11,", 1),
                       "bad_int:user_id")],
        "src_inter": [(hand_log.src(1, 105, 3600, [7, big], 201, 1), "out_of_range:keyword")],
        "item_features": [(hand_log.item(300, 1, 1, 10).replace("[1, 2]", too_long),
                           "field_too_long")],
    }
    extra = {name: [line for line, _ in lines] for name, lines in bad.items()}
    extra["item_features"].append(hand_log.item(301, 1, 1, 10).replace("[1, 2]", long_caption))
    inp = hand_log.write(tmp_path / "in", extra=extra)
    stats = run_job(inp, tmp_path / "out", "--max-rejected-fraction", "1.0")
    assert dead_letters(tmp_path / "out") == sorted(
        (name, reason, line) for name, lines in bad.items() for line, reason in lines)
    assert stats["item_features"]["rows_used"] == len(hand_log.ITEM_ROWS) + 1   # item 301
    assert_hand_examples(tmp_path / "out")


def test_move_per_file_moves_a_tree_as_on_an_object_store(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "top.txt").write_text("1")
    (tmp_path / "a" / "b" / "deep.txt").write_text("2")
    beam_support.move(str(tmp_path / "a"), str(tmp_path / "z" / "a2"), per_file=True)
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "z" / "a2" / "top.txt").read_text() == "1"
    assert (tmp_path / "z" / "a2" / "b" / "deep.txt").read_text() == "2"


def write_augment_outputs(data_dir):
    """What `python -m qrec_tf.augment --output <data_dir>` leaves there (a real table)."""
    positives.write({"7_8": [204]}, str(data_dir))
    for name in ("augment_summary.json", "augment_config.yaml", "diffusion.weights.h5"):
        (data_dir / name).write_text("{}")
    (data_dir / "checkpoints").mkdir()


@pytest.mark.slow
def test_overwrite_replaces_outputs_only_when_the_new_run_succeeded(tmp_path, monkeypatch):
    """Issue 17.4: --overwrite deleted the old outputs first (a crash left nothing) and kept the
    augment stage's positives/, which `positives: auto` then read as the new data's table."""
    inp = hand_log.write(tmp_path / "in")
    out = tmp_path / "out"
    run_job(inp, out)
    write_augment_outputs(out)
    assert positives.load(str(out), "auto")[1] == "diffusion"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # without --overwrite an earlier run is refused, even when only the augment outputs are left
    only_augment = tmp_path / "only_augment"
    only_augment.mkdir()
    write_augment_outputs(only_augment)
    for directory in (out, only_augment):
        with pytest.raises(build_tfrecords.InputError, match=r"positives.*pass --overwrite"):
            run_job(inp, directory)

    # a run that fails its checks: the earlier outputs stay, its own are in failed_run/
    bad = hand_log.write(tmp_path / "bad", extra={"user_features": ["x,1,2,3,4"] * 3})
    with pytest.raises(SystemExit, match="user_features: 3 of 7 rows rejected"):
        run_job(bad, out, "--overwrite")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[0] != FAILED} == before
    assert (out / FAILED / S.STATS_FILE).exists()

    # a run that crashes: the earlier outputs stay, its partial ones are removed
    def crash(self, element, items):
        raise RuntimeError("worker lost")
    with monkeypatch.context() as patch:
        patch.setattr(build_tfrecords.BuildUserExamples, "process", crash)
        with pytest.raises(Exception, match="worker lost"):
            run_job(inp, out, "--overwrite", "--min-count", "3")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == after

    # a run that succeeds: new outputs, no augment outputs of the old data, nothing staged
    run_job(inp, out, "--overwrite", "--min-count", "3")
    assert (out / S.VOCAB_DIR / f"{S.VOCAB_ITEMS}.txt").read_text() == "21\t3\n201\t3\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*S.SPLITS, S.VOCAB_DIR, S.QUERY_ITEMS_DIR, S.DEAD_LETTER_DIR, S.STATS_FILE,
         S.SCHEMA_FILE, S.ITEM_CATEGORIES_FILE])
    assert positives.load(str(out), "auto")[1] == "log"
    assert_hand_examples(out)


def test_an_output_that_is_a_file_is_a_user_error(tmp_path, capsys):
    inp = hand_log.write(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    assert build_tfrecords.main(["--input", str(inp), "--output", str(tmp_path / "file")]) == 2
    assert f"cannot write to {tmp_path / 'file'}" in capsys.readouterr().err
