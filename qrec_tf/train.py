"""Trains a registered model on the Beam job's TFRecords.

    python -m qrec_tf.train --config configs/queryrec.yaml --data DIR --model-dir DIR
        [--set model.embedding_dim=32 --set train.epochs=3 ...]
        [--strategy default|mirrored|multi_worker|tpu] [--mixed-precision]
        [--warm-start PREVIOUS_MODEL_DIR]

Writes into --model-dir: config.yaml (the resolved config), model.weights.h5 (best validation AUC),
run.json (data dir, best epoch, history, throughput), tensorboard/ (every loss term, AUC, learning
rate, examples/s) and backup/ while running: a killed run started again with the same
--model-dir resumes from its last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import data, distribute, model_layout, warm_start
from qrec_tf import schema as S
from qrec_tf.config import Config, load_config
from qrec_tf.distribute import STRATEGIES, make_strategy  # noqa: F401 (this module's API)
from qrec_tf.models.registry import build_model
from qrec_tf.optimizers import make_optimizer

LOG = logging.getLogger("qrec_tf.train")


class ThroughputLogger(keras.callbacks.Callback):
    """Examples/s and the learning rate per epoch, to the logs and TensorBoard."""

    def __init__(self, log_dir: str, batch_size: int):
        super().__init__()
        self._writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self._batch_size = batch_size
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        rate = self._steps * self._batch_size / (time.perf_counter() - self._start)
        self.rates.append(rate)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self._writer.as_default():
            tf.summary.scalar("examples_per_second", rate, step=epoch)
            tf.summary.scalar("learning_rate", lr, step=epoch)
        if logs is not None:
            logs["examples_per_second"] = rate


class ResumableHistory(keras.callbacks.Callback):
    """Every finished epoch's logs, also those of the runs before a kill: kept in
    <backup_dir>/history.json beside BackupAndRestore's state (and removed with it), so that a
    resumed run's run.json has the whole history. On resuming, the checkpoint and early stopping
    callbacks get back the best validation AUC so far (and early stopping its patience count),
    so that the weights kept are those of the best epoch of the whole run."""

    def __init__(self, backup_dir: str, checkpoint: keras.callbacks.ModelCheckpoint,
                 early_stopping: keras.callbacks.EarlyStopping, monitor: str = "val_auc"):
        super().__init__()
        self.path = os.path.join(backup_dir, "history.json")
        self.epochs: list[dict] = []  # {"epoch": 0-based index, log name: value}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.epochs = json.load(f)
        self._callbacks = (checkpoint, early_stopping)
        self._monitor = monitor
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first:
            return
        self._first = False
        # Epochs the restored backup does not hold (a kill between the two writes) run again.
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch]
        scores = [e[self._monitor] for e in self.epochs if self._monitor in e]
        if scores:
            best = int(np.argmax(scores))  # the first best: the checkpoint keeps the first
            for callback in self._callbacks:
                callback.best = scores[best]
            self._callbacks[1].wait = len(scores) - 1 - best

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.epochs, f)
        os.replace(self.path + ".tmp", self.path)  # a kill leaves the old file or the new one

    @property
    def history(self) -> dict[str, list[float]]:
        """{log name: [value per epoch]} over every epoch of the run (NaN where one lacks it)."""
        names = dict.fromkeys(k for e in self.epochs for k in e if k != "epoch")
        return {k: [e.get(k, float("nan")) for e in self.epochs] for k in names}


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite: nothing is saved as the model."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises TrainingDiverged at the first batch whose loss is NaN or infinite. (Keras'
    TerminateOnNaN only stops the epoch, whose validation and checkpoint then still run on the
    NaN weights and report an AUC of them.) First among the callbacks, so none sees that batch."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingDiverged(
                f"the training loss is {float(loss)} at epoch {self._epoch + 1}, step {batch + 1}:"
                " training stopped and no weights were saved as the model (try a smaller "
                "train.learning_rate)")


def check_finite_weights(model: keras.Model, what: str) -> None:
    """TrainingDiverged naming the first variable that holds a NaN or an infinity."""
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable.value)).all():
            raise TrainingDiverged(f"{what}: variable {variable.path} holds NaN or infinite "
                                   "values")


def train(config: Config, data_dir: str, model_dir: str, strategy_name: str = "default",
          mixed_precision: bool = False, verbose="auto",
          extra_callbacks: list | None = None, worker_dir: str | None = None,
          warm_start_dir: str | None = None) -> dict:
    """Runs training; returns what run.json holds. Under several workers only the chief writes
    `model_dir`; the others write to `worker_dir` (kept) or a private temporary directory.
    `warm_start_dir`: a finished run's --model-dir that the model starts from
    (qrec_tf.warm_start)."""
    S.Schema.load(data_dir)  # a clear error early when --data is not the Beam job's output
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"--model-dir {model_dir} is a file, not a directory")
    try:
        return _train(config, data_dir, model_dir, strategy_name, mixed_precision, verbose,
                      extra_callbacks, worker_dir, warm_start_dir)
    except tf.errors.DataLossError as error:
        raise data.corrupt_data_error(data_dir, S.EXAMPLE_SPLITS, error) from None


def _train(config: Config, data_dir: str, model_dir: str, strategy_name: str,
           mixed_precision: bool, verbose, extra_callbacks: list | None,
           worker_dir: str | None, warm_start_dir: str | None) -> dict:
    # First: a MultiWorkerMirroredStrategy must configure the runtime before it starts.
    strategy = make_strategy(strategy_name)
    dirs = distribute.WorkerDirs.for_strategy(strategy, model_dir, worker_dir)
    model_dir = dirs.root
    with open(model_layout.config_path(model_dir), "w") as f:
        f.write(config.to_yaml())
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    tc = config.train
    with strategy.scope():
        model = build_model(config.model, data_dir)
        warm = (warm_start.warm_start(model, warm_start_dir, data_dir) if warm_start_dir
                else None)
        optimizer = make_optimizer(tc.optimizer, tc.learning_rate)
        if mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)

    # Only what the model reads is parsed (~1/3 of an example's values for din).
    train_data, valid_data, steps_per_epoch, validation_steps = distribute.training_input(
        strategy, data_dir, tc, model.trains_on_search_examples, model.input_feature_names())
    best_weights = model_layout.best_weights_path(model_dir)
    throughput = ThroughputLogger(model_layout.tensorboard_dir(model_dir), tc.batch_size)
    checkpoint = keras.callbacks.ModelCheckpoint(best_weights, monitor="val_auc", mode="max",
                                                 save_best_only=True, save_weights_only=True)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                   patience=tc.early_stopping_patience)
    backup_dir = model_layout.backup_dir(model_dir)
    history = ResumableHistory(backup_dir, checkpoint, early_stopping)
    callbacks = [
        StopOnNonFiniteLoss(),
        keras.callbacks.TensorBoard(model_layout.tensorboard_dir(model_dir)),
        throughput,
        history,  # after throughput (its examples/s), before the backup (written first)
        keras.callbacks.BackupAndRestore(backup_dir),
        checkpoint,
        early_stopping,
        *(extra_callbacks or []),
    ]
    started = time.perf_counter()
    model.fit(train_data, validation_data=valid_data, epochs=tc.epochs,
              steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
              callbacks=callbacks, verbose=verbose, shuffle=False)  # tf.data shuffles
    elapsed = time.perf_counter() - started
    # The served and evaluated weights are those of the best validation AUC.
    if os.path.exists(best_weights):
        model.load_weights(best_weights)
    check_finite_weights(model, "the trained weights were not saved")
    model.save_weights(model_layout.weights_path(model_dir))
    warm_start.save_vocabularies(data_dir, model_dir)
    val_auc = history.history.get("val_auc", [])  # every epoch, those before a resume too
    summary = {
        "model": config.model.name,
        "data_dir": os.path.abspath(data_dir),
        "epochs_run": len(val_auc),
        "best_epoch": (int(max(range(len(val_auc)), key=val_auc.__getitem__)) + 1
                       if val_auc else None),
        "best_val_auc": max(val_auc) if val_auc else None,
        "train_seconds": elapsed,
        "examples_per_second": history.history.get("examples_per_second", throughput.rates),
        "history": history.history,
        "data_lineage": S.read_lineage(data_dir),
        "warm_start": warm,
    }
    model_layout.write_run(model_dir, summary)
    dirs.finish()
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/queryrec.yaml")
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. train.epochs=3")
    parser.add_argument("--strategy", default="default", choices=STRATEGIES)
    parser.add_argument("--mixed-precision", action="store_true",
                        help="float16 compute with loss scaling (GPU)")
    parser.add_argument("--worker-dir", default=None,
                        help="with --strategy multi_worker: where a worker other than the chief "
                             "writes (kept; default: a private temporary directory, removed "
                             "after a finished run)")
    parser.add_argument("--warm-start", metavar="MODEL_DIR", default=None,
                        help="start from this finished run's model: every embedding row is "
                             "copied to its vocabulary value's row, new values' rows are "
                             "initialised, the optimizer starts fresh (qrec_tf.warm_start); the "
                             "data's vocabularies should extend the run's (build_tfrecords "
                             "--previous-data), and --data holds the window of days to train on")
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.set)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = train(config, args.data, args.model_dir, args.strategy, args.mixed_precision,
                        args.verbose if args.verbose == "auto" else int(args.verbose),
                        worker_dir=args.worker_dir, warm_start_dir=args.warm_start)
    except (FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        if args.strategy != "multi_worker":
            raise
        print(f"{parser.prog}: error: lost a worker of the cluster ({type(error).__name__}): "
              "start every worker again with the same command; training resumes from the last "
              "finished epoch", file=sys.stderr)
        return 1
    written = (args.model_dir if os.path.exists(model_layout.weights_path(args.model_dir))
               else "the chief's --model-dir (this worker is not the chief)")
    print(f"best val AUC {summary['best_val_auc']:.4f} at epoch {summary['best_epoch']}; "
          f"weights and config in {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
