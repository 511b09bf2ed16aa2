"""The latent diffusion's training step (`model.latent: true`) against the item count, with its
rows read by a resource gather (`layers.embedding.sparse_rows`, the committed layers) and, for
comparison, by a whole-variable read (`keras.ops.take`, as before).

    python -m benchmarks.latent_step [--items 200000 2000000] [--turns 3] [--steps 10]

Each case is one LatentDiffusion (8 equal groups, the default model config: d = 16, split signs,
H = [256], residual) with FusedLazyAdam, stepping on the same batch: 128 queries of 188 random
entries each (the 2M-item generated log's mean), half positives, random t and noise. The cases
take turns (`--turns` rounds of `--steps` timed steps after 2 warm-up steps), and the median
per case is printed with the ratios to the gather at the smallest N, measured in this run.
The step is the trainer's: the summed squared error over all N items from the entries and the
decoders' Gram matrices (its O(N d^2) part), gradients, the optimizer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.augment.config import AugmentModelConfig
from qrec_tf.augment.latent import FusedLazyAdam, build_latent_diffusion
from qrec_tf.layers import group_decoder, group_encoder, latent_diffusion
from qrec_tf.layers.embedding import sparse_rows

GROUPS, BATCH, ENTRIES_PER_QUERY = 8, 128, 188
READS = {"gather": sparse_rows,
         "whole-read": lambda variable, ids: keras.ops.take(variable, ids, axis=0)}


def use_reads(read) -> None:
    """Makes the latent layers read their rows with `read` (they call it at trace time)."""
    for module in (group_decoder, group_encoder, latent_diffusion):
        module.sparse_rows = read


def make_step(items: int, read_name: str, seed: int = 0):
    """A traced training step of a fresh model over `items` items, its rows read by
    READS[read_name]."""
    keras.utils.set_random_seed(seed)
    model = build_latent_diffusion(AugmentModelConfig(latent=True), [items // GROUPS] * GROUPS,
                                   seed)
    optimizer = FusedLazyAdam(3e-3)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    entries = BATCH * ENTRIES_PER_QUERY
    batch_row = tf.constant(np.sort(rng.integers(0, BATCH, entries)), tf.int32)
    row = tf.constant(rng.integers(0, model.items, entries), tf.int32)
    value = tf.constant(rng.choice([0.5, -0.5], entries).astype(np.float32))
    timesteps = tf.constant(rng.integers(0, model.steps, BATCH), tf.int32)
    noise = tf.constant(rng.normal(size=(BATCH, model.latent_width)).astype(np.float32))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.training_loss(batch_row, row, value, value, BATCH,
                                                      timesteps, noise, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    use_reads(READS[read_name])
    try:
        for _ in range(2):          # trace and warm up with this case's reads
            step()
    finally:
        use_reads(sparse_rows)
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--reads", nargs="+", default=list(READS), choices=list(READS))
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    cases = {(items, read): make_step(items, read) for items in args.items for read in args.reads}
    times: dict = {case: [] for case in cases}
    for turn in range(args.turns):
        for case, step in cases.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                float(step())
            times[case].append((time.perf_counter() - started) / args.steps * 1000)
        print(f"turn {turn + 1}/{args.turns}: " + ", ".join(
            f"{items:,} {read} {times[(items, read)][-1]:.0f} ms" for items, read in cases),
            flush=True)
    base = statistics.median(times[(min(args.items), args.reads[0])])
    print(f"\n| items | reads | ms/step (median of {args.turns} turns) | x {args.reads[0]} at "
          f"{min(args.items):,} |\n|---|---|---|---|")
    for (items, read), values in times.items():
        median = statistics.median(values)
        print(f"| {items:,} | {read} | {median:.0f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
