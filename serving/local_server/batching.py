"""Request batching like TF Serving's `--enable_batching` (BatchingParameters from
`--batching_parameters_file`): concurrent requests to the same signature of the same version are
concatenated along axis 0, scored in one call, and split again.

A batch starts with the oldest waiting request and takes the requests queued behind it (same
version and signature) until it holds `max_batch_size` rows (users for score_candidates) or
`batch_timeout_micros` passed since that first request; `num_batch_threads` batches run at
once. With `pad_variable_length_inputs`, score_candidates requests with different candidate
counts share a batch: each user's candidates are padded to the longest with its first candidate,
and each request gets back its own N scores (TF Serving returns the padded scores and leaves the
cut to the client; serving.client cuts too). A request larger than `max_batch_size` is refused,
as in TF Serving; a full queue (`max_enqueued_batches` batches waiting) answers UNAVAILABLE.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from typing import Mapping

import grpc
import numpy as np
import tensorflow as tf

from serving.local_server.metrics import Metrics
from serving.local_server.validation import RequestError


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters fields the stand-in reads (its defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    pad_variable_length_inputs: bool = False


def read_batching_parameters(path: str) -> BatchingParameters:
    """A batching.config (text proto: `name { value: N }` or `name: true`) -> parameters; an
    unknown field is a ValueError (the tensorflow-serving-api wheel has no proto for it)."""
    with open(path) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    fields = {}
    for name, wrapped, plain in re.findall(r"(\w+)\s*(?:\{\s*value\s*:\s*(\w+)\s*\}|:\s*(\w+))",
                                           text):
        fields[name] = wrapped or plain
    known = {f.name: f.type for f in dataclasses.fields(BatchingParameters)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{path}: unsupported batching parameters {unknown}")
    values = {}
    for name, raw in fields.items():
        if known[name] == "bool":
            if raw not in ("true", "false"):
                raise ValueError(f"{path}: {name} must be true or false, got {raw}")
            values[name] = raw == "true"
        else:
            if not raw.isdigit() or (int(raw) < 1 and name != "batch_timeout_micros"):
                raise ValueError(f"{path}: {name} must be a positive integer, got {raw}")
            values[name] = int(raw)
    return BatchingParameters(**values)


@dataclasses.dataclass
class _Task:
    arrays: dict[str, np.ndarray]
    rows: int
    enqueued: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None


class Batcher:
    """Scores requests in batches; `run` blocks until its request's outputs are ready."""

    def __init__(self, params: BatchingParameters,
                 power_of_two: tuple[str, ...] = ("score_candidates",),
                 metrics: Metrics | None = None, model_name: str = ""):
        """`power_of_two`: signatures whose batches are cut to a power of two rows (the
        export's score_candidates pads its users to one; qrec_tf.export). `metrics` gets each
        batch's size, its requests' queueing times and its run time (Metrics.record_batch)."""
        self.params = params
        self.power_of_two = power_of_two
        self.metrics = metrics
        self.model_name = model_name
        self._queues: dict[tuple, collections.deque] = {}
        self._versions: dict[tuple, object] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0        # batches run, and the requests in them (for tests, benchmarks)
        self.batched_requests = 0
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, served, signature_name: str, tensors: Mapping[str, tf.Tensor]
            ) -> dict[str, np.ndarray]:
        """Checked inputs of one request (`check_inputs`) -> its outputs, scored in a batch."""
        arrays = {k: v.numpy() for k, v in tensors.items()}
        rows = len(next(iter(arrays.values())))
        if rows > self.params.max_batch_size:
            raise RequestError(f"Task size {rows} is larger than maximum input batch size "
                               f"{self.params.max_batch_size} (batching.config max_batch_size)")
        task = _Task(arrays, rows, time.monotonic())
        key = (id(served), signature_name)
        with self._cond:
            queue = self._queues.setdefault(key, collections.deque())
            queued = sum(t.rows for t in queue)
            if queued + rows > self.params.max_enqueued_batches * self.params.max_batch_size:
                raise RequestError("The batch scheduling queue is full (batching.config "
                                   "max_enqueued_batches)", 503, grpc.StatusCode.UNAVAILABLE)
            self._versions[key] = served
            queue.append(task)
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _next_batch(self) -> tuple[object, str, list[_Task]] | None:
        """Waits for the oldest request, then for its batch to fill or time out."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._stopped:
                    return None
                waiting = [(q[0].enqueued, key) for key, q in self._queues.items() if q]
                if not waiting:
                    self._cond.wait()
                    continue
                first, key = min(waiting)
                queue = self._queues[key]
                left = first + timeout - time.monotonic()
                if sum(t.rows for t in queue) < self.params.max_batch_size and left > 0:
                    self._cond.wait(left)
                    continue
                tasks, rows = [], 0
                while queue and rows + queue[0].rows <= self.params.max_batch_size:
                    rows += queue[0].rows
                    tasks.append(queue.popleft())
                # score_candidates pads the users to a power of two: a batch of 20 would score
                # 32. Those past the largest power of two wait for the next batch instead.
                while key[1] in self.power_of_two and len(tasks) > 1 and rows & (rows - 1):
                    rows -= tasks[-1].rows
                    queue.appendleft(tasks.pop())
                return self._versions[key], key[1], tasks

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            served, signature_name, tasks = batch
            self.batches += 1
            self.batched_requests += len(tasks)
            started = time.monotonic()
            try:
                self._score(served, signature_name, tasks)
            except BaseException as error:  # the batch failed: each request alone, own errors
                for task in tasks:
                    self._score(served, signature_name, [task], error)
            if self.metrics is not None:
                self.metrics.record_batch(
                    self.model_name, signature_name,
                    sum(t.rows for t in tasks), [started - t.enqueued for t in tasks],
                    time.monotonic() - started)

    def _score(self, served, signature_name: str, tasks: list[_Task],
               batch_error: BaseException | None = None) -> None:
        try:
            merged, widths = self._merge(tasks)
            outputs = served.run(signature_name, {k: tf.constant(v) for k, v in merged.items()})
        except BaseException as error:
            if batch_error is None and len(tasks) > 1:
                raise
            for task in tasks:
                task.error = error
                task.done.set()
            return
        start = 0
        for task, width in zip(tasks, widths):
            task.result = {name: value[start:start + task.rows] if width is None or
                           value.ndim < 2 else value[start:start + task.rows, :width]
                           for name, value in outputs.items()}
            start += task.rows
            task.done.set()

    def _merge(self, tasks: list[_Task]) -> tuple[dict[str, np.ndarray], list[int | None]]:
        """The tasks' inputs concatenated on axis 0; candidate matrices [U, N] of different N
        padded to the longest with each user's first candidate. Returns the inputs and each
        task's own N (None when nothing was padded)."""
        names = tasks[0].arrays.keys()
        widths: list[int | None] = [None] * len(tasks)
        merged = {}
        for name in names:
            parts = [t.arrays[name] for t in tasks]
            shapes = {p.shape[1:] for p in parts}
            if len(shapes) > 1:
                if not self.params.pad_variable_length_inputs or any(p.ndim != 2 for p in parts):
                    raise RequestError(f"input {name!r}: requests of different shapes "
                                       f"{sorted(shapes)} cannot share a batch without "
                                       "pad_variable_length_inputs")
                longest = max(p.shape[1] for p in parts)
                widths = [p.shape[1] for p in parts]
                parts = [np.concatenate([p, np.repeat(p[:, :1], longest - p.shape[1], axis=1)],
                                        axis=1) for p in parts]
            merged[name] = np.concatenate(parts, axis=0)
        return merged, widths
