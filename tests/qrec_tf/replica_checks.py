"""The checks that need two replicas in one process, run by tests/qrec_tf/test_distribute.py as

    python -m tests.qrec_tf.replica_checks OUT.npz DATA_DIR WORK_DIR

TensorFlow's CPU must be split into two logical devices before anything starts the runtime, which
a pytest process that ran other tests has done already; hence a child process. Each check writes
arrays (1 replica vs 2 replicas on the same global batch) into OUT.npz; the test compares them.
"""

from __future__ import annotations

import os
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qrec_tf import distribute, train  # noqa: E402
from qrec_tf.config import load_config  # noqa: E402
from qrec_tf.layers.dice import Dice  # noqa: E402
from qrec_tf.layers.embedding import SparseEmbedding  # noqa: E402
from qrec_tf.optimizers import LazyAdam  # noqa: E402

GLOBAL_BATCH = 8


def two_replicas() -> tf.distribute.Strategy:
    strategy = distribute.cpu_mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    return strategy


def split(strategy: tf.distribute.Strategy, *arrays: np.ndarray):
    """Each array [GLOBAL_BATCH, ...] cut into one consecutive part per replica."""
    n = strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(tf.constant(np.split(a, n)[ctx.replica_id_in_sync_group])
                          for a in arrays))


def lazy_adam_steps(strategy: tf.distribute.Strategy, steps: int = 2) -> dict[str, np.ndarray]:
    """`steps` LazyAdam steps of a SparseEmbedding (+ a dense layer) on the same global batches;
    ids repeat within and across the replicas' halves, so the all-reduced IndexedSlices hold
    duplicates from several replicas. The loss is each replica's mean / replicas, as
    CTRModel.train_step computes it."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=(steps, GLOBAL_BATCH)).astype("int64")
    ids[:, -1] = ids[:, 0]  # the same row in both halves
    targets = rng.normal(size=(steps, GLOBAL_BATCH)).astype("float32")
    with strategy.scope():
        emb = SparseEmbedding(10, 3)
        emb.build((None,))
        emb.embeddings.assign(rng.normal(size=(10, 3)).astype("float32"))
        dense = keras.layers.Dense(1)
        dense.build((None, 3))
        dense.kernel.assign(rng.normal(size=(3, 1)).astype("float32"))
        optimizer = LazyAdam(learning_rate=0.1)
        variables = [*emb.trainable_variables, *dense.trainable_variables]
        optimizer.build(variables)

    def step(batch_ids, batch_targets):
        with tf.GradientTape() as tape:
            predictions = dense(emb(batch_ids))[:, 0]
            loss = tf.reduce_mean(tf.square(predictions - batch_targets))
            loss = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        gradients = tape.gradient(loss, variables)
        assert isinstance(gradients[0], tf.IndexedSlices)
        optimizer.apply_gradients(zip(gradients, variables))

    # As Keras' fit runs a step: strategy.run inside one tf.function.
    distributed_step = tf.function(lambda *args: strategy.run(step, args=args))
    for i in range(steps):
        distributed_step(*split(strategy, ids[i], targets[i]))
    return {"table": emb.embeddings.numpy(), "kernel": dense.kernel.numpy(),
            "m": optimizer._momentums[0].numpy(), "v": optimizer._velocities[0].numpy()}


def dice_step(strategy: tf.distribute.Strategy, masked: bool) -> dict[str, np.ndarray]:
    """Dice in training on a global batch [8, 5, 4]: outputs, the input gradient, and the moving
    statistics after the step."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(GLOBAL_BATCH, 5, 4)).astype("float32")
    mask = rng.random((GLOBAL_BATCH, 5)) < 0.6 if masked else np.ones((GLOBAL_BATCH, 5), bool)
    with strategy.scope():
        dice = Dice()
        dice.build((None, 5, 4))
        dice.alpha.assign([0.1, 0.2, 0.3, 0.4])

    def step(inputs, inputs_mask):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = dice(inputs, training=True, mask=inputs_mask if masked else None)
            loss = tf.reduce_sum(out * tf.range(4, dtype=tf.float32))
        return out, tape.gradient(loss, inputs)

    out, grad = tf.function(lambda *args: strategy.run(step, args=args))(
        *split(strategy, x, mask))

    def local(v):
        return np.concatenate([t.numpy() for t in strategy.experimental_local_results(v)])

    stats = {f"moving_{name}_replica{i}": value.numpy() for name in ("mean", "variance")
             for i, value in enumerate(strategy.experimental_local_results(
                 getattr(dice.batch_norm, f"moving_{name}").value))}
    return {"out": local(out), "grad": local(grad), **stats}


TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=64", "train.shuffle_buffer=2000", "train.epochs=1",
        "train.steps_per_epoch=3", "train.validation_steps=2",
        # MBA counts an id once per replica whose examples touch it (models/base.py,
        # train_step), so 2 replicas equal 1 exactly only without it.
        "model.embedding_l2=0.0"]


def trained_weights(data_dir: str, model_dir: str, strategy: str, mixed: bool = False
                    ) -> dict[str, np.ndarray]:
    """A few din steps through `train.train`: every saved weight, and the loss history."""
    summary = train.train(load_config("configs/din.yaml", TINY), data_dir, model_dir, strategy,
                          mixed_precision=mixed, verbose=0)
    model = train.build_model(load_config("configs/din.yaml", TINY).model, data_dir)
    model.load_weights(os.path.join(model_dir, "model.weights.h5"))
    weights = {f"w{i}": w.numpy() for i, w in enumerate(model.weights)}
    return {**weights, "loss": np.array(summary["history"]["loss"])}


def main(out: str, data_dir: str, work_dir: str, only_units: str = "") -> None:
    results = {}
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", two_replicas())):
        results.update({f"adam_{name}_{k}": v for k, v in lazy_adam_steps(strategy).items()})
        for masked in (False, True):
            results.update({f"dice{int(masked)}_{name}_{k}": v
                            for k, v in dice_step(strategy, masked).items()})
    if only_units:
        return np.savez(out, **results)
    results["mirrored_replicas"] = np.array(train.make_strategy("mirrored").num_replicas_in_sync)
    results.update({f"train_one_{k}": v for k, v in trained_weights(
        data_dir, os.path.join(work_dir, "one"), "default").items()})
    results.update({f"train_two_{k}": v for k, v in trained_weights(
        data_dir, os.path.join(work_dir, "two"), "mirrored").items()})
    # Last: mixed precision sets a global policy.
    results["mixed_loss"] = trained_weights(
        data_dir, os.path.join(work_dir, "mixed"), "mirrored", mixed=True)["loss"]
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
