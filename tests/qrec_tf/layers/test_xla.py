"""static_shapes / in_xla_context: true only inside the block, restored after it."""

from qrec_tf.layers.xla import in_xla_context, static_shapes


def test_in_xla_context_only_inside_static_shapes():
    assert not in_xla_context()
    with static_shapes():
        assert in_xla_context()
        with static_shapes():
            assert in_xla_context()
        assert in_xla_context()                    # the nested block restores, not clears
    assert not in_xla_context()
