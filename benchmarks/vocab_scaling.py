"""Training-step cost against vocabulary size, and din / queryrec throughput, in one run.

    python -m benchmarks.vocab_scaling [--steps 30] [--batch-size 1024] [--large 2000000]

1. Step time of `din` with a 10k-item vocabulary and with a 2M-item vocabulary (users and
   queries scaled alike), with our LazyAdam + SparseEmbedding, and with Keras' Adam for
   comparison. Target: ratio (2M / 10k) <= 1.5 for ours.
2. Training examples/s of `din` and `queryrec` at batch 1024 (10k vocabulary), and the ratio of
   their step times. Target: queryrec / din <= 1.5.
Batches are random ids drawn from the vocabularies (no data directory needed). The five models
(din: 10k and 2M items, each with LazyAdam and Adam; queryrec: 10k, LazyAdam) are built first and
then take turns of a few steps each, so that the ratios compare steps timed in the same spells of
this noisy machine; the figures are median step times.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.models.registry import MODELS
from qrec_tf.optimizers import make_optimizer
from qrec_tf.testing import random_batch, random_data_constants, random_vocabularies


class Timed:
    """A compiled model, its training-step function and data, and the times of its steps."""

    def __init__(self, name: str, n_items: int, optimizer: str, batch: int,
                 jit_compile: bool = False):
        config = load_config(f"configs/{name}.yaml")
        schema = S.Schema()
        vocabs = random_vocabularies(n_items, n_words=80_000)
        constants = random_data_constants(config.model, vocabs)
        keras.utils.set_random_seed(0)
        self.model = MODELS[name][0](config.model, schema, vocabs, **constants)
        self.model.compile(optimizer=make_optimizer(optimizer, 1e-3), jit_compile=jit_compile)
        rng = np.random.default_rng(0)
        batches = [random_batch(schema, vocabs, batch, rng) for _ in range(4)]
        x = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
        y = np.concatenate([b[1] for b in batches])
        if jit_compile:
            # XLA cannot compile the vocabularies' hash tables: the batches hold indices (as
            # score_candidates' compiled part takes them), looked up before the step.
            x = {k: np.asarray(v) for k, v in self.model.index_features(x).items()}
            # Keras turns jit_compile off for models with lookup layers (supports_jit False),
            # which the step no longer runs.
            self.model._jit_compile = True
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()
        # Traced inside indexed_inputs (with jit_compile), the step keeps reading indices.
        with (self.model.indexed_inputs() if jit_compile else contextlib.nullcontext()):
            self.model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # trace + warm up
        self.step = self.model.make_train_function()
        self.batches = iter(dataset)
        self.times: list[float] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            started = time.perf_counter()
            # The loss as a number: the step has run when the clock is read.
            float(self.step(self.batches)["loss"])
            self.times.append(time.perf_counter() - started)

    @property
    def median(self) -> float:
        return float(np.median(self.times))


def interleave(runs: list[Timed], steps: int, per_turn: int = 3) -> None:
    """Takes turns of `per_turn` steps per model until each ran `steps`: a slow spell of this
    (shared, noisy) machine then falls on every model alike instead of on whichever ran then."""
    for _ in range(max(1, steps // per_turn)):
        for run in runs:
            run.run(per_turn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=2_000_000)
    args = parser.parse_args()
    b, n = args.batch_size, args.steps

    compared = (("din", args.small, "lazy_adam"), ("din", args.large, "lazy_adam"),
                ("din", args.small, "adam"), ("din", args.large, "adam"),
                ("queryrec", args.small, "lazy_adam"))
    runs = {key: Timed(*key, b) for key in compared}
    interleave(list(runs.values()), n)

    print(f"median step times over {n} steps per model, the models taking turns ({b} examples "
          "per step)")
    print(f"1) din step time vs item vocabulary ({args.small:,} vs {args.large:,})")
    for optimizer in ("lazy_adam", "adam"):
        small = runs["din", args.small, optimizer].median
        large = runs["din", args.large, optimizer].median
        print(f"   {optimizer:9s}: {small * 1e3:7.1f} ms vs {large * 1e3:7.1f} ms  ->  ratio "
              f"{large / small:5.2f}" + ("   (target <= 1.5)" if optimizer == "lazy_adam" else ""))

    print(f"2) throughput, {args.small:,} items, lazy_adam")
    times = {name: runs[name, args.small, "lazy_adam"].median for name in ("din", "queryrec")}
    for name, t in times.items():
        print(f"   {name:9s}: {t * 1e3:7.1f} ms/step  {b / t:9,.0f} examples/s")
    print(f"   queryrec / din step time: {times['queryrec'] / times['din']:.2f}   (target <= 1.5)")


if __name__ == "__main__":
    main()
