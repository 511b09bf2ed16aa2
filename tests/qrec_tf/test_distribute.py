"""Distributed training: input sharding, the chief's and the other workers' directories, two
replicas matching one on the same global batch (LazyAdam + SparseEmbedding, Dice, a din run,
mixed precision), and two trainer processes of a MultiWorkerMirroredStrategy on 127.0.0.1."""

import json
import os
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import tensorflow as tf

from pipelines import build_tfrecords
from qrec_tf import data, distribute, train
from qrec_tf import schema as S
from qrec_tf.model_layout import WEIGHTS_FILE
from tests.qrec_tf.conftest import generated_data

SHARDS = 3
TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=64", "train.shuffle_buffer=2000"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generated_data(tmp_path_factory.mktemp("distribute_data"), 3, 20, 4,
                          "--num-shards", str(SHARDS))


def example_keys(dataset) -> list[tuple]:
    """(user, item, timestamp) of every example, in order."""
    return [key for batch in dataset for key in zip(
        batch["user_id"].numpy().tolist(), batch["item_id"].numpy().tolist(),
        batch["timestamp"].numpy().tolist())]


@pytest.mark.parametrize("count, by_files", [(2, True), (3, True), (4, False), (5, False)])
def test_shards_are_disjoint_and_cover_the_split(data_dir, count, by_files):
    assert len(data.shard_files(data_dir, "train")) == SHARDS
    everything = example_keys(data.make_dataset(data_dir, "train", 50, shuffle=False))
    assert len(set(everything)) == len(everything)  # the key identifies an example
    parts = [example_keys(data.make_dataset(data_dir, "train", 50, seed=1, shard=(i, count)))
             for i in range(count)]
    assert sorted(k for part in parts for k in part) == sorted(everything)
    assert all(part for part in parts)
    if not by_files:  # every count-th example: sizes differ by at most one
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert data.Sharding.choose(SHARDS, (0, count), "train").by_files == by_files


def test_the_beam_job_writes_enough_shards_for_several_workers_by_default():
    args, _ = build_tfrecords.parse_args(["--input", "logs", "--output", "data"])
    assert args.num_shards == build_tfrecords.DEFAULT_NUM_SHARDS == 8
    assert data.Sharding.choose(args.num_shards, (7, 8), "train").by_files


def test_shard_arguments_are_checked(data_dir):
    with pytest.raises(ValueError, match=r"shard index must be in \[0, 2\)"):
        data.make_dataset(data_dir, "train", 8, shard=(2, 2))


def test_sharded_multitask_data_covers_both_splits_once(data_dir):
    whole = [data.split_size(data_dir, "train"), data.split_size(data_dir, S.SEARCH_TRAIN)]
    domains = [np.concatenate([b[S.DOMAIN].numpy() for b in data.make_multitask_dataset(
        data_dir, 32, seed=0, shard=(i, 2))]) for i in range(2)]
    assert [sum((d == 0).sum() for d in domains), sum((d == 1).sum() for d in domains)] == whole
    assert all(len(d) for d in domains)


def test_the_global_batch_must_split_over_the_replicas():
    assert distribute.per_replica_batch_size(1024, 4) == 256
    with pytest.raises(ValueError, match="train.batch_size=100 is the global batch"):
        distribute.per_replica_batch_size(100, 3)
    assert distribute.steps_for(1000, 256, "train", "train.steps_per_epoch") == 4
    with pytest.raises(ValueError, match="set train.validation_steps"):
        distribute.steps_for(None, 256, "valid", "train.validation_steps")


def fake_worker(task_type, task_id, chief):
    return types.SimpleNamespace(
        extended=types.SimpleNamespace(should_checkpoint=chief),
        cluster_resolver=types.SimpleNamespace(task_type=task_type, task_id=task_id))


def test_only_the_chief_writes_the_model_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model_dir = str(tmp_path / "model")
    chief = distribute.WorkerDirs.for_strategy(fake_worker("worker", 0, True), model_dir)
    assert chief.root == model_dir and chief.is_chief
    other = distribute.WorkerDirs.for_strategy(fake_worker("worker", 1, False), model_dir)
    assert os.path.dirname(other.root) == str(tmp_path / "tmp") and "worker1" in other.root
    # A restarted worker finds the same directory (and its backup/ there).
    again = distribute.WorkerDirs.for_strategy(fake_worker("worker", 1, False), model_dir)
    assert again.root == other.root
    open(other.path("x"), "w").close()
    other.finish()
    chief.finish()
    assert not os.path.exists(other.root) and os.path.isdir(model_dir)
    given = distribute.WorkerDirs.for_strategy(fake_worker("worker", 1, False), model_dir,
                                               str(tmp_path / "w1"))
    given.finish()
    assert given.root == str(tmp_path / "w1") and os.path.isdir(given.root)
    default = distribute.WorkerDirs.for_strategy(tf.distribute.get_strategy(), model_dir)
    assert default.is_chief and default.root == model_dir


def test_a_worker_resumes_from_the_chief_backup_when_the_model_dir_is_shared(tmp_path):
    model_dir, own = tmp_path / "model", tmp_path / "w1"
    (model_dir / "backup").mkdir(parents=True)
    (model_dir / "backup" / "training_metadata.json").write_text('{"epoch": 3}')
    (own / "backup").mkdir(parents=True)
    (own / "backup" / "training_metadata.json").write_text('{"epoch": 2}')  # died while saving
    (own / "backup" / "stale").write_text("")
    dirs = distribute.WorkerDirs.for_strategy(fake_worker("worker", 1, False), str(model_dir),
                                              str(own))
    assert sorted(os.listdir(dirs.path("backup"))) == ["training_metadata.json"]
    assert (own / "backup" / "training_metadata.json").read_text() == '{"epoch": 3}'
    assert os.listdir(model_dir / "backup") == ["training_metadata.json"]  # untouched


def test_a_bad_tf_config_is_a_message(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", "{'cluster': ")
    assert train.main(["--config", "configs/din.yaml", "--data", data_dir, "--model-dir",
                       str(tmp_path / "m"), "--strategy", "multi_worker"]) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err


# --- two replicas in one process (a child with two logical CPU devices) -----------------------
@pytest.fixture(scope="module")
def replicas(data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("replicas")
    out = work / "out.npz"
    subprocess.run([sys.executable, "-m", "tests.qrec_tf.replica_checks", str(out), data_dir,
                    str(work)], check=True, timeout=900,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    return dict(np.load(out))


def pairs(results, prefix):
    one = {k[len(prefix) + 5:]: v for k, v in results.items() if k.startswith(prefix + "_one_")}
    assert one
    return [(k, v, results[f"{prefix}_two_{k}"]) for k, v in one.items()]


@pytest.mark.slow
def test_lazy_adam_on_sparse_embeddings_equals_one_replica(replicas):
    for name, one, two in pairs(replicas, "adam"):
        np.testing.assert_allclose(two, one, atol=1e-5, err_msg=name)
    assert np.abs(replicas["adam_one_m"]).sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("masked", [0, 1])
def test_dice_statistics_are_those_of_the_global_batch(replicas, masked):
    for name, one, two in pairs(replicas, f"dice{masked}"):
        np.testing.assert_allclose(two, one, atol=1e-5, err_msg=name)
    for stat in ("mean", "variance"):
        np.testing.assert_array_equal(replicas[f"dice{masked}_two_moving_{stat}_replica0"],
                                      replicas[f"dice{masked}_two_moving_{stat}_replica1"])


@pytest.mark.slow
def test_mirrored_training_on_two_replicas_equals_one(replicas):
    assert replicas["mirrored_replicas"] == 2
    for name, one, two in pairs(replicas, "train"):
        np.testing.assert_allclose(two, one, atol=1e-5, err_msg=name)
    assert np.isfinite(replicas["mixed_loss"]).all()


# --- two trainer processes ---------------------------------------------------------------------
def h5_arrays(path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_two_worker_processes_train_din_and_agree(data_dir, tmp_path):
    def argv(i: int) -> list[str]:
        return ["nice", "-n", "10", sys.executable, "-m", "qrec_tf.train",
                "--config", "configs/din.yaml", "--data", data_dir,
                "--model-dir", str(tmp_path / f"model{i}"), "--strategy", "multi_worker",
                "--worker-dir", str(tmp_path / f"worker{i}"), "--verbose", "2",
                *[a for s in [*TINY, "train.epochs=1", "train.steps_per_epoch=4",
                              "train.validation_steps=2"] for a in ("--set", s)]]

    codes = distribute.run_local_cluster([argv(0), argv(1)], timeout=420,
                                         log_dir=str(tmp_path / "logs"),
                                         env={"PYTHONPATH": os.getcwd()})
    logs = {i: (tmp_path / "logs" / f"worker{i}.log").read_text()[-3000:] for i in range(2)}
    assert codes == [0, 0], logs
    chief, other = tmp_path / "model0", tmp_path / "worker1"
    for name in ("config.yaml", WEIGHTS_FILE, "run.json", "tensorboard"):
        assert (chief / name).exists(), name
    assert not (chief / "backup").exists() and not (other / "backup").exists()
    assert not (tmp_path / "model1").exists()  # the non-chief wrote nothing into its model dir
    assert not (tmp_path / "worker0").exists()  # the chief writes its model dir only
    assert json.loads((chief / "run.json").read_text())["epochs_run"] == 1
    weights, others = h5_arrays(chief / WEIGHTS_FILE), h5_arrays(other / WEIGHTS_FILE)
    assert weights.keys() == others.keys() and len(weights) > 20
    for name, value in weights.items():  # Dice's statistics too: they are all-reduced
        np.testing.assert_array_equal(others[name], value, err_msg=name)
    history = json.loads((chief / "run.json").read_text())["history"]
    assert np.isfinite(history["loss"]).all() and 0 <= history["val_auc"][0] <= 1


def test_the_kubernetes_example_gives_each_pod_its_tf_config():
    import yaml

    service, job = yaml.safe_load_all(open("deploy/k8s/trainer.yaml"))
    pod = job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == "qrec-train"
    assert job["spec"]["completionMode"] == "Indexed"
    container = pod["containers"][0]
    workers = int(next(e["value"] for e in container["env"] if e["name"] == "WORKERS"))
    assert workers == job["spec"]["completions"]
    script = container["args"][0].replace("exec python3 -m qrec_tf.train",
                                          'printf %s "$TF_CONFIG"; exit 0; ')
    script = script.replace("python3 -c", f"{sys.executable} -c")
    for index in range(workers):
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                             env={"WORKERS": str(workers), "JOB_COMPLETION_INDEX": str(index),
                                  "PATH": os.environ["PATH"]}).stdout
        assert json.loads(out) == {"cluster": {"worker": [
            f"qrec-train-{i}.qrec-train:2222" for i in range(workers)]},
            "task": {"type": "worker", "index": index}}
