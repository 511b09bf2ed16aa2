"""Training-step cost against vocabulary size, and din / queryrec throughput, in one run.

    python benchmarks/vocab_scaling.py [--steps 30] [--batch-size 1024] [--large 2000000]

1. Step time of `din` with a 10k-item vocabulary and with a 2M-item vocabulary (users and
   queries scaled alike), with our LazyAdam + SparseEmbedding, and with Keras' Adam for
   comparison. Target: ratio (2M / 10k) <= 1.5 for ours.
2. Training examples/s of `din` and `queryrec` at batch 1024 (10k vocabulary), and the ratio of
   their step times. Target: queryrec / din <= 1.5.
Batches are random ids drawn from the vocabularies (no data directory needed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from qrec_tf import schema as S  # noqa: E402
from qrec_tf.config import load_config  # noqa: E402
from qrec_tf.models.registry import MODELS  # noqa: E402
from qrec_tf.optimizers import make_optimizer  # noqa: E402
from qrec_tf.testing import random_batch, random_vocabularies  # noqa: E402


def step_time(name: str, n_items: int, optimizer: str, batch: int, steps: int) -> float:
    config = load_config(f"configs/{name}.yaml")
    schema = S.Schema()
    vocabs = random_vocabularies(n_items, n_words=80_000)
    positives = None
    if config.model.contrastive_weight:
        rows = vocabs.size(S.VOCAB_QUERIES)
        positives = np.random.default_rng(0).integers(2, vocabs.size(S.VOCAB_ITEMS),
                                                      (rows, config.model.contrastive_positives))
    keras.utils.set_random_seed(0)
    model = MODELS[name][0](config.model, schema, vocabs, query_positives=positives)
    model.compile(optimizer=make_optimizer(optimizer, 1e-3))
    rng = np.random.default_rng(0)
    batches = [random_batch(schema, vocabs, batch, rng) for _ in range(4)]
    x = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    y = np.concatenate([b[1] for b in batches])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # trace + warm up
    timer = StepTimer()
    model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer])
    return float(np.mean(np.diff(timer.ends)))


class StepTimer(keras.callbacks.Callback):
    """End time of every training step. Timing a whole fit() call instead measured its start and
    end too: here those came to whole multiples of 10.24 s, which swamped the steps."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        # The loss as a number: the step has run when the timestamp is taken.
        float(logs["loss"])
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=2_000_000)
    args = parser.parse_args()
    b, n = args.batch_size, args.steps

    print(f"1) din step time vs item vocabulary ({args.small:,} vs {args.large:,}), batch {b}")
    for optimizer in ("lazy_adam", "adam"):
        small = step_time("din", args.small, optimizer, b, n)
        large = step_time("din", args.large, optimizer, b, n)
        print(f"   {optimizer:9s}: {small * 1e3:7.1f} ms vs {large * 1e3:7.1f} ms  ->  ratio "
              f"{large / small:5.2f}" + ("   (target <= 1.5)" if optimizer == "lazy_adam" else ""))

    print(f"2) throughput at batch {b}, {args.small:,} items, lazy_adam")
    times = {name: step_time(name, args.small, "lazy_adam", b, n) for name in ("din", "queryrec")}
    for name, t in times.items():
        print(f"   {name:9s}: {t * 1e3:7.1f} ms/step  {b / t:9,.0f} examples/s")
    print(f"   queryrec / din step time: {times['queryrec'] / times['din']:.2f}   (target <= 1.5)")


if __name__ == "__main__":
    main()
