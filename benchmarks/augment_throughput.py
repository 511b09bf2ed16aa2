"""Steps/s and achieved GFLOP/s of the augment stage's training step (`qrec_tf.augment`) against
the measured peak of plain matmuls of the same shapes, with the step's pieces timed, in one run.

    python -m benchmarks.augment_throughput [--items 20000] [--queries 4000] [--batch-size 128]
        [--hidden 256] [--turns 4] [--per-turn 3] [--variants before ... one_input]
        [--profile DIR]

The step is the stage's own (`augment.build_trainer`, default config: hidden [256], split signs,
input dropout 0.5, residual skip) on a generated query-item matrix (12 entries per query, a fifth
of them clicks) over N items; its input is only the step counter, as in the stage.

FLOPs of a step: only the dense products count (the element-wise work is O(B N), 1/h of them).
With B = batch, N = items, S = 2 (split signs), E = step embedding width, h = hidden units:
  forward    2 B (S N + E) h  +  2 B h N                  (first layer, output layer)
  backward   2 B (S N + E) h  +  2 B h N  +  2 B h N      (both kernels' gradients, and the
                                                           hidden activations' gradient)
  total      4 B (S N + E) h  +  6 B h N  = 9.17 GFLOP at B = 128, N = 20,000, h = 256.
The bound: those five products as plain tf.matmul calls on random float32 tensors of the same
shapes, in one tf.function, timed in turns with the step (so a slow spell of this shared machine
falls on both); bound time = total FLOPs / that rate.

Pieces, each a tf.function timed on its own (same turns): the batch (the in-graph CSR -> dense
rows, masks and noise of `DiffusionTrainer.batch`), the noise draw alone, the forward loss, the
forward and backward pass, the optimizer's update with fixed gradients, and the whole Keras
train function (what `fit` runs per step).

Variants (each change timed against the code without it, in the same process):
  before         the denoiser as it was (one product of the concatenation [relu(x) || relu(-x)
                 || steps], dropout after the sign split) and Keras' Adam;
  fused_adam     that denoiser with qrec_tf.optimizers.FusedAdam;
  kernel_slices  + the first layer over kernel slices (no gradient for its input);
  after          + dropout before the sign split (half the random draws): the stage's step;
  one_input      the stage's step with model.split_signs=false (S = 1: its FLOPs and bound are
                 its own), to price the doubled input.
"step / bound" is the step's time over its FLOPs at the plain matmuls' rate.
Checks printed for the stage's step: float64 ops in its graph, how often `fit` traced it over
two epochs, and where Python runs (nowhere per step: the batch is built in the graph).
`--profile DIR` writes a tf.profiler trace of 3 steps of the stage's step (TensorBoard's
profile tab).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from qrec_tf import augment
from qrec_tf.augment.vectors import DenseRows, QueryItemMatrix
from qrec_tf.layers.denoiser import Denoiser, step_embedding
from qrec_tf.optimizers import FusedAdam


class ConcatDenoiser(Denoiser):
    """The denoiser before this benchmark: the first layer multiplies the concatenation
    [relu(x) || relu(-x) || steps], dropped out after the split (kept here as the reference)."""

    def call(self, x_t, timesteps, training=None):
        steps = self.step_projection(step_embedding(timesteps, self.step_embedding_dim))
        x = x_t
        if self.split_signs:
            x = ops.concatenate([ops.relu(x), ops.relu(-x)], axis=-1)
        h = ops.concatenate([self.input_dropout(x, training=training), steps], axis=-1)
        for layer in self.hidden:
            h = layer(h)
        out = self.output_layer(h)
        if self.residual:
            out += self.skip[0] * ops.relu(x_t) - self.skip[1] * ops.relu(-x_t)
        return out


class LateDropoutDenoiser(Denoiser):
    """Today's first layer over kernel slices, with the dropout of before: after the sign split,
    one mask per input column."""

    def mlp_inputs(self, x_t, training):
        inputs = [ops.relu(x_t), ops.relu(-x_t)] if self.split_signs else [x_t]
        return [self.input_dropout(part, training=training) for part in inputs]


# name: (denoiser, optimizer, config overrides)
VARIANTS = {"before": (ConcatDenoiser, keras.optimizers.Adam, []),
            "fused_adam": (ConcatDenoiser, FusedAdam, []),
            "kernel_slices": (LateDropoutDenoiser, FusedAdam, []),
            "after": (Denoiser, FusedAdam, []),
            "one_input": (Denoiser, FusedAdam, ["model.split_signs=false"])}
PIECES = ("batch", "noise", "forward", "forward+backward", "optimizer", "train step")


def synthetic_matrix(queries: int, items: int, per_query: int, seed: int) -> QueryItemMatrix:
    """`per_query` distinct random columns per query, a fifth of them clicks."""
    rng = np.random.default_rng(seed)
    columns = np.stack([np.sort(rng.choice(items, per_query, replace=False))
                        for _ in range(queries)])
    positive = rng.random(columns.size) < 0.2
    return QueryItemMatrix(np.arange(queries + 1, dtype=np.int64) * per_query,
                           columns.ravel().astype(np.int32), positive, positive.astype(np.int32))


def step_flops(batch: int, items: int, hidden: int, signs: int, embedding: int) -> dict:
    first, output = 2 * batch * (signs * items + embedding) * hidden, 2 * batch * hidden * items
    return {"forward": first + output, "total": 2 * first + 3 * output}


class Timer:
    """A no-argument function and the times of its calls; the result is fetched to host so the
    clock stops after the work."""

    def __init__(self, function: Callable[[], object]):
        self.function, self.times = function, []
        self.call()                                                   # trace and warm up

    def call(self) -> None:
        started = time.perf_counter()
        result = self.function()
        for tensor in tf.nest.flatten(result)[:1]:
            np.asarray(tensor)
        self.times.append(time.perf_counter() - started)

    @property
    def median(self) -> float:
        return float(np.median(self.times[1:]))


def pieces(trainer: augment.DiffusionTrainer) -> dict[str, Timer]:
    diffusion, step = trainer.diffusion, tf.constant(5, tf.int64)
    batch = tf.function(trainer.batch)
    x_input, x_target, timesteps, noise = batch(step)
    shape = tf.shape(noise)

    @tf.function
    def loss():
        return tf.reduce_mean(diffusion.training_loss(x_input, x_target, timesteps, noise,
                                                      training=True))

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(diffusion.training_loss(x_input, x_target, timesteps, noise,
                                                           training=True))
        return tape.gradient(value, trainer.trainable_variables)

    fixed = gradients()
    optimizer = trainer.optimizer
    update = tf.function(lambda: optimizer.apply_gradients(zip(fixed, trainer.trainable_variables)))
    train_function = trainer.make_train_function() or trainer.train_function
    steps = iter(tf.data.Dataset.range(10**9))
    return {"batch": Timer(lambda: batch(step)),
            "noise": Timer(tf.function(lambda: tf.random.stateless_normal(
                shape, tf.constant([0, 5], tf.int64)))),
            "forward": Timer(loss), "forward+backward": Timer(gradients),
            "optimizer": Timer(lambda: (update(), optimizer.iterations)[1]),
            "train step": Timer(lambda: train_loss(train_function(steps)))}


def train_loss(outputs) -> tf.Tensor:
    """The loss of a Keras train function's outputs (an Optional in newer Keras)."""
    if isinstance(outputs, tf.experimental.Optional):
        outputs = outputs.get_value()
    return outputs["loss"]


def matmul_peak(batch: int, items: int, hidden: int, signs: int, embedding: int) -> Timer:
    """The step's five dense products as plain matmuls (forward: x W1, h W2; backward:
    x^T dh, h^T dout, dout W2^T) on random float32 tensors."""
    rng = tf.random.Generator.from_seed(0)
    width = signs * items + embedding
    x, w1 = rng.normal((batch, width)), rng.normal((width, hidden))
    h, w2 = rng.normal((batch, hidden)), rng.normal((hidden, items))
    dout, dh = rng.normal((batch, items)), rng.normal((batch, hidden))

    @tf.function
    def products():
        return [tf.matmul(x, w1), tf.matmul(h, w2), tf.matmul(x, dh, transpose_a=True),
                tf.matmul(h, dout, transpose_a=True), tf.matmul(dout, w2, transpose_b=True)]

    return Timer(products)


def float64_ops(trainer: augment.DiffusionTrainer) -> list[str]:
    graph = tf.function(lambda: trainer.train_step(None)).get_concrete_function().graph
    return sorted({op.type for op in graph.get_operations()
                   if any(out.dtype == tf.float64 for out in op.outputs)})


def fit_traces(trainer: augment.DiffusionTrainer) -> int:
    """How often `fit` traced the train step over two epochs of 3 steps."""
    traces, step = [0], trainer.train_step

    def counting(data):
        traces[0] += 1
        return step(data)

    trainer.train_step = counting
    trainer.make_train_function(force=True)
    trainer.fit(tf.data.Dataset.range(3), epochs=2, verbose=0, shuffle=False)
    trainer.train_step = step
    return traces[0]


PROFILED_STEPS = 3


def op_profile(logdir: str) -> list[tuple[str, float, int]]:
    """(op type, seconds, calls) of the TensorFlow ops in the newest tf.profiler trace under
    logdir, most time first, read from its XPlane (the host plane's tf_Compute lines)."""
    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older layouts
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    seconds, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                op = plane.event_metadata[event.metadata_id].name.split(":")[-1]
                if op not in ("Process", "ParallelFor"):
                    seconds[op] += event.duration_ps * 1e-12
                    calls[op] += 1
    return [(op, value, calls[op]) for op, value in seconds.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=4_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--per-turn", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--profile", default=None, help="write a tf.profiler trace here")
    args = parser.parse_args()
    # Each variant traces its own copies of the timed functions once; TensorFlow's warning
    # about "retracing" counts them together. Real per-step retracing is checked below.
    tf.get_logger().setLevel("ERROR")

    common = [f"train.batch_size={args.batch_size}", f"model.hidden_units=[{args.hidden}]"]
    configs = {name: augment.load_augment_config(None, [*common, *VARIANTS[name][2]])
               for name in args.variants}
    model = augment.load_augment_config(None, common).model
    matrix = synthetic_matrix(args.queries, args.items, 12, 0)
    dense = DenseRows(matrix, args.items, augment.AugmentDataConfig())
    rows = np.arange(args.queries)
    trainers = {name: augment.build_trainer(config, args.items, dense, rows,
                                            *VARIANTS[name][:2])
                for name, config in configs.items()}
    timers = {name: pieces(trainer) for name, trainer in trainers.items()}
    peak = matmul_peak(args.batch_size, args.items, args.hidden, 2 if model.split_signs else 1,
                       model.step_embedding_dim)
    for _ in range(args.turns):
        for timer in [peak, *(t for group in timers.values() for t in group.values())]:
            for _ in range(args.per_turn):
                timer.call()

    def flops_of(config: augment.AugmentConfig) -> dict:
        return step_flops(args.batch_size, args.items, args.hidden,
                          2 if config.model.split_signs else 1, config.model.step_embedding_dim)

    flops = flops_of(augment.load_augment_config(None, common))
    peak_rate = flops["total"] / peak.median
    print(f"N = {args.items:,} items, batch {args.batch_size}, hidden [{args.hidden}], split "
          f"signs, dropout {model.dropout}; {args.turns} turns of {args.per_turn} calls per "
          f"piece (median); {flops['total'] / 1e9:.2f} GFLOP per step "
          f"(forward {flops['forward'] / 1e9:.2f})")
    print(f"plain matmuls of the step's shapes: {peak.median * 1e3:.0f} ms, "
          f"{peak_rate / 1e9:.1f} GFLOP/s (the bound)\n")
    print("| variant | " + " | ".join(f"{p} ms" for p in PIECES)
          + " | steps/s | GFLOP/s | step / bound |")
    print("|---" * (len(PIECES) + 4) + "|")
    for name, group in timers.items():
        step, total = group["train step"].median, flops_of(configs[name])["total"]
        print(f"| {name} | " + " | ".join(f"{group[p].median * 1e3:.0f}" for p in PIECES)
              + f" | {1 / step:.2f} | {total / step / 1e9:.1f} | "
              f"{step / (total / peak_rate):.2f}x |")
    stage = trainers.get("after")
    if stage is not None:
        print(f"\nfloat64 ops in the step's graph: {float64_ops(stage) or 'none'}; traces of the "
              f"train step over 2 epochs of fit: {fit_traces(stage)}")
        if args.profile:
            tf.profiler.experimental.start(args.profile)
            for _ in range(PROFILED_STEPS):
                timers["after"]["train step"].call()
            tf.profiler.experimental.stop()
            print(f"\ntf.profiler trace of {PROFILED_STEPS} steps in {args.profile}; op types by "
                  "time (inclusive, per step; the executor's Process/ParallelFor wrappers left "
                  "out):\n\n| op | ms per step | calls per step |\n|---|---|---|")
            for op, seconds, calls in op_profile(args.profile)[:12]:
                print(f"| {op} | {seconds * 1e3 / PROFILED_STEPS:.1f} | "
                      f"{calls / PROFILED_STEPS:g} |")


if __name__ == "__main__":
    main()
