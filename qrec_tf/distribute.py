"""What training needs to know about replicas and workers: the strategy, which worker writes the
model directory, where the others write, and how each worker's input is sharded.

`python -m qrec_tf.train --strategy multi_worker` runs one process per worker, each with a
`TF_CONFIG` that describes the cluster (README, "Training on several machines"); TensorFlow's
collective all-reduce keeps the replicas' variables equal. Keras 3's callbacks are not
chief-aware, so `WorkerDirs` gives every worker but the chief a private directory for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable, Sequence

import tensorflow as tf

from qrec_tf import model_layout
from qrec_tf import schema as S
from qrec_tf.data_dir import DataDirectory

LOG = logging.getLogger(__name__)
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy of a `--strategy` name; a clear error for a bad TF_CONFIG."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return cpu_mirrored_strategy()
    if name == "multi_worker":  # TF_CONFIG describes the cluster
        try:
            json.loads(os.environ.get("TF_CONFIG") or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON ({error}): see README, "
                             "'Training on several machines'") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def cpu_mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy over every logical CPU device (one unless configured otherwise, as the
    tests do to run 2 replicas; MirroredStrategy() would take CPU:0 alone). Reductions go
    through one device: the CPU collectives' keys restart with each strategy object, so a second
    strategy in the same process would meet the first one's collectives."""
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice())


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy of more than one worker (Keras' own test)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def distributes_input(strategy: tf.distribute.Strategy) -> bool:
    """Whether train.py builds its input per worker (`distribute_datasets`): under the mirrored
    strategies. Other strategies get the plain dataset, as Keras distributes it."""
    return isinstance(strategy, (tf.distribute.MirroredStrategy,
                                 tf.distribute.MultiWorkerMirroredStrategy))


@dataclasses.dataclass
class WorkerDirs:
    """Where this worker writes. The chief writes `model_dir`; any other worker writes the same
    files into `root`, a private directory (`worker_dir` if given, else one under the system's
    temporary directory, named after the task and the model directory so that a restarted worker
    finds its backup), which `finish` removes unless it was given."""

    model_dir: str
    root: str
    is_chief: bool
    task: str
    keep: bool

    @classmethod
    def for_strategy(cls, strategy: tf.distribute.Strategy, model_dir: str,
                     worker_dir: str | None = None) -> "WorkerDirs":
        is_chief = bool(strategy.extended.should_checkpoint)
        resolver = getattr(strategy, "cluster_resolver", None)
        task = (f"{resolver.task_type}{resolver.task_id}"
                if resolver is not None and resolver.task_type else "chief")
        if is_chief:
            root = model_dir
        elif worker_dir:
            root = worker_dir
        else:
            key = hashlib.sha1(os.path.abspath(model_dir).encode()).hexdigest()[:12]
            root = os.path.join(tempfile.gettempdir(), f"qrec_tf_{task}_{key}")
        os.makedirs(root, exist_ok=True)
        if not is_chief:
            LOG.info("%s is not the chief: it writes to %s, not to %s", task, root, model_dir)
            chief_backup = model_layout.backup_dir(model_dir)
            if os.path.isdir(chief_backup):
                # A shared --model-dir: resume from the chief's backup (the workers' variables
                # are equal), so that every worker restarts from the same epoch even when this
                # one lost its own (a new machine) or died while writing it.
                shutil.rmtree(model_layout.backup_dir(root), ignore_errors=True)
                shutil.copytree(chief_backup, model_layout.backup_dir(root))
                LOG.info("%s resumes from the chief's backup %s", task, chief_backup)
        return cls(model_dir, root, is_chief, task, keep=is_chief or bool(worker_dir))

    def path(self, name: str) -> str:
        """`name` inside this worker's directory."""
        return os.path.join(self.root, name)

    def finish(self) -> None:
        """After a finished run: removes a non-chief's private directory (not given by the user).
        A failed run keeps it: its backup/ lets the restarted worker resume."""
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def per_replica_batch_size(global_batch: int, replicas: int) -> int:
    """train.batch_size is the global batch: a clear error when the replicas cannot split it."""
    if global_batch % replicas:
        raise ValueError(f"train.batch_size={global_batch} is the global batch and must be a "
                         f"multiple of the {replicas} replicas in sync")
    return global_batch // replicas


def distribute_datasets(strategy: tf.distribute.Strategy, global_batch: int,
                        make: Callable[[int, tuple[int, int] | None], tf.data.Dataset]
                        ) -> tf.distribute.DistributedDataset:
    """One input pipeline per worker: `make(per-replica batch size, shard)` builds a worker's
    dataset, `shard` = (pipeline index, pipeline count) or None with a single pipeline (as
    `qrec_tf.data.make_dataset` takes it); its consecutive batches go to the worker's
    replicas, so a step takes `global_batch` examples in all. TensorFlow's automatic sharding is
    not used: it fails when a split has fewer files than workers and cannot know the shards'
    lengths."""
    batch = per_replica_batch_size(global_batch, strategy.num_replicas_in_sync)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        count = context.num_input_pipelines
        return make(batch, None if count == 1 else (context.input_pipeline_id, count))

    return strategy.distribute_datasets_from_function(dataset_fn)


def steps_for(examples: int | None, global_batch: int, what: str, key: str) -> int:
    """Steps in one pass over `examples` at the global batch (the last one partly wrapped
    around); a clear error when the data directory does not count the examples."""
    if not examples:
        raise ValueError(f"stats.json does not count the {what} examples: set {key} when "
                         "training on several workers")
    return math.ceil(examples / global_batch)


def training_input(strategy: tf.distribute.Strategy, data_dir: DataDirectory | str,
                   train_config, multitask: bool, features: Sequence[str] | None = None
                   ) -> tuple:
    """(train data, valid data, steps_per_epoch, validation_steps) for `keras.Model.fit`.

    `data_dir`: the loaded data directory (its schema and stats.json's split sizes).

    `features`: the features to parse (the model's `input_feature_names`; default every one).

    `train_config.batch_size` is the global batch. Under the mirrored strategies each worker
    builds its own input (`distribute_datasets`). With several workers every worker reads its
    shard, repeated: shards differ in length, and the workers must run the same number of steps,
    so an epoch is train.steps_per_epoch steps, by default one pass over the split's examples
    (stats.json) at the global batch; validation likewise (train.validation_steps).
    """
    tc = train_config
    data_dir = DataDirectory.of(data_dir)
    workers = in_multi_worker_mode(strategy)
    steps, valid_steps = tc.steps_per_epoch, tc.validation_steps
    if workers:
        splits = ("train", S.SEARCH_TRAIN) if multitask else ("train",)
        sizes = [data_dir.split_size(split) for split in splits]
        steps = steps or steps_for(None if None in sizes else sum(sizes), tc.batch_size,
                                   "train", "train.steps_per_epoch")
        valid_steps = valid_steps or steps_for(data_dir.split_size("valid"), tc.batch_size,
                                               "valid", "train.validation_steps")

    def train_input(batch: int, shard: tuple[int, int] | None) -> tf.data.Dataset:
        options = dict(seed=tc.seed, shuffle_buffer=tc.shuffle_buffer, supervised=True,
                       num_epochs=None if steps else 1, shard=shard, features=features)
        return (data_dir.multitask_dataset(batch, **options) if multitask
                else data_dir.dataset("train", batch, **options))

    def valid_input(batch: int, shard: tuple[int, int] | None) -> tf.data.Dataset:
        return data_dir.dataset("valid", batch, supervised=True, shard=shard,
                                num_epochs=None if valid_steps else 1, features=features)

    if distributes_input(strategy):
        return (distribute_datasets(strategy, tc.batch_size, train_input),
                distribute_datasets(strategy, tc.batch_size, valid_input), steps, valid_steps)
    return train_input(tc.batch_size, None), valid_input(tc.batch_size, None), steps, valid_steps


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_configs(workers: int) -> list[str]:
    """TF_CONFIG of each of `workers` processes of a cluster on 127.0.0.1 (worker 0 is the
    chief), on free ports: to try multi-worker training on one machine."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


def run_local_cluster(argvs: list[list[str]], timeout: float, log_dir: str,
                      env: dict | None = None) -> list[int]:
    """Runs one process per argv (e.g. `python -m qrec_tf.train ... --strategy multi_worker`)
    as the workers of a cluster on 127.0.0.1, each with its TF_CONFIG and its output in
    <log_dir>/worker<i>.log; returns their exit codes. Each process leads its own process group,
    killed whole when `timeout` seconds pass (exit code None then) or on any error here."""
    os.makedirs(log_dir, exist_ok=True)
    processes = []
    try:
        for i, (argv, tf_config) in enumerate(zip(argvs, local_tf_configs(len(argvs)))):
            with open(os.path.join(log_dir, f"worker{i}.log"), "wb") as log:
                processes.append(subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **(env or {}), "TF_CONFIG": tf_config}))
        deadline = time.monotonic() + timeout
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
