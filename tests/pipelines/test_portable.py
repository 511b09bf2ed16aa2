"""Both Beam jobs on Beam's portability framework (pipelines.local_cluster: job service + SDK
worker processes, the path of Dataflow / Flink / Spark) give the DirectRunner's outputs."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from pipelines import analysis, build_tfrecords, local_cluster, synthetic
from qrec_tf import schema as S

ONE_PROCESS = "--direct_running_mode=in_memory"
SHARDS = "2"


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def canonical_examples(split_dir: Path) -> set[bytes]:
    """Every example of a split, parsed and serialized again with a fixed feature order."""
    files = sorted(str(p) for p in split_dir.glob("*.tfrecord.gz"))
    assert files, f"no shards in {split_dir}"
    out = set()
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        out.add(example.SerializeToString(deterministic=True))
    return out


def dead_letters(out: Path) -> set[str]:
    lines = set()
    for path in (out / S.DEAD_LETTER_DIR).iterdir():
        lines.update(path.read_text().splitlines())
    return lines


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_both_jobs_give_the_direct_runners_outputs_on_the_portable_runner(tmp_path):
    log = tmp_path / "log"
    synthetic.generate(str(log), users=40, items=300, seed=7, bad_rows=8, rec_per_user=20,
                       sessions_per_user=4)
    build_args = ["--input", str(log), "--max-rejected-fraction", "1.0", "--seed", "2",
                  "--num-shards", SHARDS]
    analysis_args = ["--input", str(log), "--users", "25", "--samples", "200", "--seed", "4"]
    direct_stats = build_tfrecords.run([*build_args, "--output", str(tmp_path / "direct"),
                                        ONE_PROCESS])
    analysis.run([*analysis_args, "--output", str(tmp_path / "direct_analysis"), ONE_PROCESS])

    pgids = []
    with local_cluster.local_cluster() as cluster:
        pgids = cluster.pids
        python = [sys.executable, "-m"]
        assert cluster.run([*python, "pipelines.build_tfrecords", *build_args,
                            "--output", str(tmp_path / "portable")], timeout_s=600) == 0
        assert cluster.run([*python, "pipelines.analysis", *analysis_args,
                            "--output", str(tmp_path / "portable_analysis")],
                           timeout_s=600) == 0
        cluster.check()
    # Both services and every worker they started are gone (stopped by process group).
    assert pgids and all(group_gone(pgid) for pgid in pgids)

    direct, portable = tmp_path / "direct", tmp_path / "portable"
    for name in (S.STATS_FILE, S.SCHEMA_FILE):
        assert (portable / name).read_bytes() == (direct / name).read_bytes(), name
    assert tree(portable / S.VOCAB_DIR) == tree(direct / S.VOCAB_DIR)
    lines = {out: sorted((out / S.ITEM_CATEGORIES_FILE).read_text().splitlines())
             for out in (direct, portable)}
    assert lines[portable] == lines[direct]
    assert len(lines[direct]) == direct_stats["item_features"]["rows_used"] > 250   # one per row
    assert len(dead_letters(direct)) == 8
    assert dead_letters(portable) == dead_letters(direct)
    for split in S.SPLITS:
        examples = canonical_examples(direct / split)
        assert len(examples) == direct_stats["examples"][split]["count"]
        assert canonical_examples(portable / split) == examples, split
        # Stronger than the sets: the same shards, byte for byte (sorted shards, fixed order).
        assert tree(portable / split) == tree(direct / split), split
    assert canonical_examples(portable / S.QUERY_ITEMS_DIR) == canonical_examples(
        direct / S.QUERY_ITEMS_DIR)

    direct, portable = tmp_path / "direct_analysis", tmp_path / "portable_analysis"
    for name in (analysis.ANALYSIS_FILE, analysis.JS_FILE, analysis.SAMPLES_FILE):
        assert (portable / name).read_bytes() == (direct / name).read_bytes(), name
    assert dead_letters(portable) == dead_letters(direct)
    assert len(dead_letters(direct)) == 8 - 1  # analysis does not read user_features


def test_port_taken_is_a_clear_error_and_nothing_starts(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(local_cluster.ClusterError, match=f"port {port} on 127.0.0.1 is taken"):
            with local_cluster.local_cluster(job_port=port):
                pass
        assert local_cluster.main(["--worker-port", str(port), "--", "true"]) == 1
    err = capsys.readouterr().err
    assert f"error: port {port} on 127.0.0.1 is taken" in err
    assert "Traceback" not in err


def test_cluster_env_puts_this_interpreter_and_checkout_first(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = local_cluster.cluster_env()
    assert env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/usr/bin", "/bin"]
    assert env["PYTHONPATH"].split(os.pathsep) == [local_cluster.ROOT, "/elsewhere"]
    assert Path(local_cluster.ROOT, "pipelines", "local_cluster.py").is_file()


def test_cli_runs_the_command_with_the_options_and_a_dead_service_is_reported(tmp_path, capfd):
    # The command prints what it was given and exits 3: both must come through.
    script = "import sys; print('ARGS', sys.argv[1:]); sys.exit(3)"
    assert local_cluster.main(["--", sys.executable, "-c", script, "--mine"]) == 3
    out = capfd.readouterr()
    args_line = next(line for line in out.out.splitlines() if line.startswith("ARGS"))
    assert "'--mine', '--runner=PortableRunner', '--job_endpoint=localhost:" in args_line
    assert "'--environment_type=EXTERNAL', '--environment_config=localhost:" in args_line
    assert args_line.endswith(", '--job_server_timeout=604800']")

    with local_cluster.local_cluster() as cluster:
        job_service, worker_pool = cluster.services
        assert local_cluster.is_listening(worker_pool.port)
        os.killpg(worker_pool.process.pid, signal.SIGKILL)
        with pytest.raises(local_cluster.ClusterError, match="the worker-pool .* exited"):
            cluster.run([sys.executable, "-c", "import time; time.sleep(600)"], timeout_s=120)
        pgid = job_service.process.pid
    assert group_gone(pgid)


def test_ctrl_c_stops_both_services(tmp_path):
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        launcher = subprocess.Popen([sys.executable, "-m", "pipelines.local_cluster"],
                                    stderr=err, env=local_cluster.cluster_env(),
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops both" not in err_path.read_text():
            assert launcher.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.2)
        text = err_path.read_text()
        pids = [int(p) for p in re.search(r"pids \[(\d+), (\d+)\]", text).groups()]
        assert "--runner=PortableRunner --job_endpoint=localhost:" in text
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(60) == 130
        assert all(group_gone(pid) for pid in pids)
        assert err_path.read_text().rstrip().endswith("stopped")
    finally:
        local_cluster.stop_group(launcher)
