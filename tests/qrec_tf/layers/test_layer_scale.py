"""LayerScale: per-channel scale from its initial value, its gradient, config round trip."""

import numpy as np
import tensorflow as tf

from qrec_tf.layers.layer_scale import LayerScale


def test_starts_at_its_initial_value_and_learns_a_scale_per_channel():
    layer = LayerScale(0.0)
    x = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(layer(x).numpy(), np.zeros((2, 3)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * tf.constant([1.0, -1.0, 2.0]))
    # d loss / d gamma_c = sum over rows of x[:, c] * upstream_c: (1 + 4), -(2 + 5), 2 (3 + 6).
    np.testing.assert_allclose(tape.gradient(loss, layer.gamma).numpy(), [5.0, -7.0, 18.0])
    layer.gamma.assign([1.0, 0.5, -2.0])
    np.testing.assert_allclose(layer(x).numpy(), [[1.0, 1.0, -6.0], [4.0, 2.5, -12.0]])


def test_config_round_trip():
    layer = LayerScale(0.25, name="scale")
    clone = LayerScale.from_config(layer.get_config())
    assert clone.init_value == 0.25 and clone.name == "scale"
    np.testing.assert_allclose(clone(tf.ones((1, 4))).numpy(), np.full((1, 4), 0.25))
