"""Per-step wall times of a Keras `fit`, for both Keras versions that `benchmarks.peers` compares.

Imports nothing itself: `benchmarks.peers_deepctr` runs it under tf-keras (DeepCTR's side venv),
`benchmarks.peers` under Keras 3, each passing its own `Callback` base class.
"""

from __future__ import annotations

import statistics
import time


def step_timer(callback_base: type) -> object:
    """A callback (subclass of `callback_base`) whose `times` holds the seconds from each training
    batch's begin to its end: the step function, the input's `get_next` inside it included (both
    Keras versions fetch the batch inside the compiled step), callbacks and logging excluded."""

    class StepTimer(callback_base):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self._started = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._started)

    return StepTimer()


def median_after_warmup(times: list[float], warmup: int) -> float:
    """Median of `times` without the first `warmup` (tracing, first allocations); seconds."""
    if len(times) <= warmup:
        raise ValueError(f"{len(times)} step times, none after {warmup} warm-up steps")
    return statistics.median(times[warmup:])
