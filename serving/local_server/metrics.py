"""Prometheus metrics like TF Serving's (`--monitoring_config_file` with `prometheus_config`):
request counts and request latency histograms per model, API, entry point, signature and status,
in Prometheus' text format at the configured path on the REST port.

TF Serving names its metrics `:tensorflow:serving:request_count` and
`:tensorflow:serving:request_latency` (microseconds, exponential buckets 10 us x 1.8^k); the
stand-in uses the same names and buckets and adds `signature_name` and `status` labels to both,
so a dashboard can split latency by signature and errors by kind.

With request batching (--enable_batching), per model and signature: the processed batch sizes
(rows, or users for score_candidates; TF Serving's `:tensorflow:serving:batching:
processed_batch_size`), the time each request waited in the batch queue (TF Serving's
`:tensorflow:serving:batching_session:queuing_latency`, microseconds) and each batch's run time
(`:tensorflow:serving:batching:batch_run_time`, the stand-in's own: merge, signature call,
split), which say whether batches fill and where a batched request's time goes.
"""

from __future__ import annotations

import bisect
import re
import threading
from typing import Iterable

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
# TF Serving's request latency buckets: 10 us growing by 1.8x, 33 of them (up to ~2.6 hours).
BUCKETS_US = tuple(10.0 * 1.8 ** k for k in range(33))
LABELS = ("model_name", "API", "entrypoint", "signature_name", "status")
BATCH_SIZE = ":tensorflow:serving:batching:processed_batch_size"
QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"
BATCH_RUN_TIME = ":tensorflow:serving:batching:batch_run_time"
BATCH_LABELS = ("model_name", "signature_name")
BATCH_SIZE_BUCKETS = tuple(float(2 ** k) for k in range(13))  # 1 .. 4096 (max_batch_size)


DEFAULT_PATH = "/monitoring/prometheus/metrics"


def read_monitoring_config(path: str) -> str | None:
    """A MonitoringConfig text proto -> the Prometheus path, or None when it is not enabled.

    The tensorflow-serving-api wheel has no monitoring_config_pb2, so its two fields are read
    here: `prometheus_config { enable: true path: "..." }`; anything else is a ValueError.
    """
    with open(path) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    match = re.fullmatch(r"\s*prometheus_config\s*\{([^{}]*)\}\s*", text)
    if not match:
        raise ValueError(f"{path}: expected `prometheus_config {{ enable: .. path: .. }}`")
    fields = dict(re.findall(r"(\w+)\s*:\s*(\w+|\"[^\"]*\")", match.group(1)))
    unknown = set(fields) - {"enable", "path"}
    if unknown or fields.get("enable", "false") not in ("true", "false"):
        raise ValueError(f"{path}: unsupported prometheus_config fields {sorted(fields)}")
    if fields.get("enable") != "true":
        return None
    return fields.get("path", '""').strip('"') or DEFAULT_PATH


class Metrics:
    """Thread-safe counters and histograms keyed by LABELS values."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}
        self._buckets: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        # metric name -> (model, signature) -> [bucket counts, count, sum]
        self._batching: dict[str, dict[tuple[str, str], list]] = {
            BATCH_SIZE: {}, QUEUING_LATENCY: {}, BATCH_RUN_TIME: {}}

    def record(self, model_name: str, api: str, entrypoint: str, signature_name: str,
               status: str, seconds: float) -> None:
        """One finished request; `status` is its gRPC code name ("OK", "INVALID_ARGUMENT")."""
        key = (model_name, api, entrypoint, signature_name, status)
        micros = seconds * 1e6
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            buckets = self._buckets.setdefault(key, [0] * len(BUCKETS_US))
            index = bisect.bisect_left(BUCKETS_US, micros)
            if index < len(BUCKETS_US):
                buckets[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + micros

    def record_batch(self, model_name: str, signature_name: str, size: int,
                     queued_seconds: list[float], run_seconds: float) -> None:
        """One batch run by the Batcher: its rows, each request's wait, its run time."""
        key = (model_name, signature_name)
        with self._lock:
            self._observe(BATCH_SIZE, key, BATCH_SIZE_BUCKETS, size)
            for seconds in queued_seconds:
                self._observe(QUEUING_LATENCY, key, BUCKETS_US, seconds * 1e6)
            self._observe(BATCH_RUN_TIME, key, BUCKETS_US, run_seconds * 1e6)

    def _observe(self, name: str, key: tuple[str, str], bounds: tuple[float, ...],
                 value: float) -> None:
        entry = self._batching[name].setdefault(key, [[0] * len(bounds), 0, 0.0])
        index = bisect.bisect_left(bounds, value)
        if index < len(bounds):
            entry[0][index] += 1
        entry[1] += 1
        entry[2] += value

    def batch_summary(self, name: str, signature_name: str) -> tuple[int, float]:
        """(observations, their sum) of one batching metric for a signature (tests)."""
        with self._lock:
            entries = [e for (_, sig), e in self._batching[name].items() if sig == signature_name]
            return sum(e[1] for e in entries), sum(e[2] for e in entries)

    def count(self, **labels: str) -> int:
        """Requests recorded whose labels include `labels` (tests, the benchmark)."""
        with self._lock:
            return sum(n for key, n in self._counts.items()
                       if all(dict(zip(LABELS, key))[k] == v for k, v in labels.items()))

    def render(self) -> str:
        """Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            counts = dict(self._counts)
            buckets = {k: list(v) for k, v in self._buckets.items()}
            sums = dict(self._sums)
            batching = {name: {k: ([*e[0]], e[1], e[2]) for k, e in entries.items()}
                        for name, entries in self._batching.items()}
        lines = [f"# TYPE {REQUEST_COUNT} counter"]
        lines += [f"{REQUEST_COUNT}{_labels(key)} {n}" for key, n in sorted(counts.items())]
        lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
        for key in sorted(buckets):
            cumulative = 0
            for bound, n in zip(BUCKETS_US, buckets[key]):
                cumulative += n
                lines.append(f"{REQUEST_LATENCY}_bucket{_labels(key, ('le', f'{bound:g}'))} "
                             f"{cumulative}")
            lines.append(f"{REQUEST_LATENCY}_bucket{_labels(key, ('le', '+Inf'))} "
                         f"{counts[key]}")
            lines.append(f"{REQUEST_LATENCY}_sum{_labels(key)} {sums[key]:.1f}")
            lines.append(f"{REQUEST_LATENCY}_count{_labels(key)} {counts[key]}")
        for name, bounds in ((BATCH_SIZE, BATCH_SIZE_BUCKETS), (QUEUING_LATENCY, BUCKETS_US),
                             (BATCH_RUN_TIME, BUCKETS_US)):
            if batching[name]:
                lines.append(f"# TYPE {name} histogram")
            for key, (counts_, total, value_sum) in sorted(batching[name].items()):
                cumulative = 0
                for bound, n in zip(bounds, counts_):
                    cumulative += n
                    le = _labels(key, ("le", f"{bound:g}"), names=BATCH_LABELS)
                    lines.append(f"{name}_bucket{le} {cumulative}")
                le = _labels(key, ("le", "+Inf"), names=BATCH_LABELS)
                lines.append(f"{name}_bucket{le} {total}")
                lines.append(f"{name}_sum{_labels(key, names=BATCH_LABELS)} {value_sum:.1f}")
                lines.append(f"{name}_count{_labels(key, names=BATCH_LABELS)} {total}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: Iterable[str], *extra: tuple[str, str],
            names: tuple[str, ...] = LABELS) -> str:
    pairs = list(zip(names, key)) + list(extra)
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"
