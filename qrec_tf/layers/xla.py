"""Whether the code being traced is compiled by XLA.

Layers that skip padding with data-dependent shapes (tf.where, gathers of the real positions:
DINAttention, SASEncoder) fall back to their static-shape computation under XLA, which needs
static shapes and would pad them back to their bounds anyway.
"""

from __future__ import annotations


def in_xla_context() -> bool:
    """True while tracing a function that XLA compiles (a `tf.function(jit_compile=True)` or a
    function called from one)."""
    # TensorFlow's own test for this; it has no public equivalent.
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
