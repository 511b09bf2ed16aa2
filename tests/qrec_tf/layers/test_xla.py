"""in_xla_context: true only while tracing what XLA compiles."""

import tensorflow as tf

from qrec_tf.layers.xla import in_xla_context


def test_in_xla_context_only_inside_jit_compiled_functions():
    seen = {}

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["compiled"] = in_xla_context()
        return x

    @tf.function
    def plain(x):
        seen["plain"] = in_xla_context()
        return compiled(x)                          # called from a plain function: still XLA

    plain(tf.constant(1.0))
    seen["eager"] = in_xla_context()
    assert seen == {"plain": False, "compiled": True, "eager": False}
