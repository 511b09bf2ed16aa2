"""Static-shape mode: code that XLA compiles runs the layers' padded computation.

Layers that skip padding with data-dependent shapes (tf.where, gathers of the real positions:
DINAttention, SASEncoder) fall back to their static-shape computation while `static_shapes()`
is active. XLA needs static shapes and would pad them back to their bounds anyway. The caller
that compiles (the export's compiled scoring, `candidate_scoring.score_candidates(compiled=True)`)
traces its function inside `static_shapes()`; TensorFlow has no public way to ask whether a
trace is compiled by XLA.
"""

from __future__ import annotations

import contextlib
import threading

_STATE = threading.local()


@contextlib.contextmanager
def static_shapes():
    """Within this block (on this thread), `in_xla_context()` is True."""
    previous = getattr(_STATE, "active", False)
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = previous


def in_xla_context() -> bool:
    """True while a caller traces code for XLA inside `static_shapes()`."""
    return bool(getattr(_STATE, "active", False))
