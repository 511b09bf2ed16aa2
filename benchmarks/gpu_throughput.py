"""Training examples/s of din and queryrec on whatever device is present (a GPU if TensorFlow
sees one): batch 1024 and 4096, float32 and mixed precision (float16 compute, loss scaling),
without and with `jit_compile` (XLA). Prints a markdown table for docs/RESULTS.md.

    python -m benchmarks.gpu_throughput [--steps 30] [--items 100000] [--models din queryrec]

Batches are random ids (`qrec_tf.testing`), as in vocab_scaling.py, whose `Timed` runs the
steps; the configurations take turns (median step time). With `jit_compile` the vocabulary
lookups run before the step (XLA has no hash tables); a configuration that XLA cannot compile
is reported with its error instead of a figure.
"""

from __future__ import annotations

import argparse
import itertools

import keras
import tensorflow as tf

from benchmarks.vocab_scaling import Timed, interleave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--models", nargs="+", default=["din", "queryrec"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1024, 4096])
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else "CPU only (no GPU visible)")
    runs, failed = {}, {}
    for name, batch, mixed, jit in itertools.product(args.models, args.batch_sizes,
                                                     (False, True), (False, True)):
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
        try:
            runs[name, batch, mixed, jit] = Timed(name, args.items, "lazy_adam", batch,
                                                  jit_compile=jit)
        except Exception as error:  # noqa: BLE001 (reported in the table)
            failed[name, batch, mixed, jit] = f"{type(error).__name__}: " + str(
                error).strip().splitlines()[0][:120]
    keras.mixed_precision.set_global_policy("float32")
    interleave(list(runs.values()), args.steps)
    print(f"device: {device}; {args.items:,} items; median of {args.steps} steps per row\n")
    print("| model | batch | precision | jit_compile | ms/step | examples/s |\n"
          "|---|---|---|---|---|---|")
    for key in itertools.product(args.models, args.batch_sizes, (False, True), (False, True)):
        name, batch, mixed, jit = key
        cells = (f"{runs[key].median * 1e3:.1f} | {batch / runs[key].median:,.0f}" if key in runs
                 else f"fails | {failed[key]}")
        print(f"| {name} | {batch} | {'mixed' if mixed else 'float32'} | {'yes' if jit else 'no'} "
              f"| {cells} |")


if __name__ == "__main__":
    main()
