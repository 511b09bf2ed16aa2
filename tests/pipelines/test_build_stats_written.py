"""build_stats.check_written: a build whose runner lost examples is not published."""

import tensorflow as tf

from pipelines import build_stats


def write_shard(path, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in range(n):
            w.write(b"record %d" % i)


def test_check_written_compares_each_split_with_the_examples_built(tmp_path):
    write_shard(tmp_path / "train" / "train-00000-of-00002.tfrecord.gz", 3)
    write_shard(tmp_path / "train" / "train-00001-of-00002.tfrecord.gz", 2)
    write_shard(tmp_path / "valid" / "valid-00000-of-00001.tfrecord.gz", 0)
    stats = {"examples": {"train": {"count": 5}, "valid": {"count": 0}}}
    assert build_stats.count_records(str(tmp_path / "train" / "*")) == 5
    assert build_stats.check_written(stats, str(tmp_path), ["train", "valid"]) == []
    stats["examples"]["train"]["count"] = 7
    stats["examples"]["valid"]["count"] = 1
    problems = build_stats.check_written(stats, str(tmp_path), ["train", "valid"])
    assert problems == [
        "train: 5 examples written of 7 built (the runner lost some; rerun with "
        "--direct_running_mode=in_memory)",
        "valid: 0 examples written of 1 built (the runner lost some; rerun with "
        "--direct_running_mode=in_memory)"]
