"""Dice against hand-computed values: moving vs batch statistics, alpha, masked statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers import Dice


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def built_dice(alpha, moving_mean=(0.0, 0.0), moving_var=(1.0, 1.0), epsilon=1e-9,
               input_shape=(None, 2)):
    dice = Dice(epsilon=epsilon)
    dice.build(input_shape)
    dice.set_weights([np.array(alpha, "float32"), np.array(moving_mean, "float32"),
                      np.array(moving_var, "float32")])
    return dice


def test_alpha_starts_at_zero_and_weights_are_alpha_plus_moving_statistics():
    dice = Dice()
    dice.build((None, 3))
    np.testing.assert_array_equal(dice.alpha.numpy(), np.zeros(3))
    assert [w.trainable for w in dice.weights] == [True, False, False]


def test_inference_uses_moving_statistics():
    dice = built_dice(alpha=[0.5, -1.0], moving_mean=[1.0, 2.0], moving_var=[4.0, 1.0])
    x = np.array([[3.0, 2.0], [-1.0, 0.0]], "float32")
    # p = sigmoid((x - mean) / sqrt(var)): [[s(1), s(0)], [s(-1), s(-2)]]
    p = np.array([[sigmoid(1.0), 0.5], [sigmoid(-1.0), sigmoid(-2.0)]])
    alpha = np.array([0.5, -1.0])
    expected = p * x + (1 - p) * alpha * x
    assert expected[0, 0] == pytest.approx(sigmoid(1) * 3 + (1 - sigmoid(1)) * 1.5)
    for training in (False, None):
        np.testing.assert_allclose(dice(x, training=training).numpy(), expected, rtol=1e-6)
    # Inference leaves the moving statistics alone.
    np.testing.assert_array_equal(dice.batch_norm.moving_mean.numpy(), [1.0, 2.0])


def test_training_uses_batch_statistics_and_updates_moving_ones():
    dice = built_dice(alpha=[0.5, -1.0])
    x = np.array([[1.0, 10.0], [3.0, 14.0]], "float32")
    # batch mean [2, 12], biased variance [1, 4] -> normalised [[-1, -1], [1, 1]]
    p = sigmoid(np.array([[-1.0, -1.0], [1.0, 1.0]]))
    expected = p * x + (1 - p) * np.array([0.5, -1.0]) * x
    np.testing.assert_allclose(dice(x, training=True).numpy(), expected, rtol=1e-5)
    # momentum 0.99: moving = 0.99 * old + 0.01 * batch
    np.testing.assert_allclose(dice.batch_norm.moving_mean.numpy(), [0.02, 0.12], rtol=1e-5)
    np.testing.assert_allclose(dice.batch_norm.moving_variance.numpy(), [1.0, 1.03], rtol=1e-5)


def test_alpha_gradient_is_one_minus_p_times_x():
    import tensorflow as tf

    dice = built_dice(alpha=[0.0, 0.0])
    x = np.array([[2.0, -3.0]], "float32")
    with tf.GradientTape() as tape:
        out = keras.ops.sum(dice(x, training=False))
    grad = tape.gradient(out, dice.alpha.value)
    np.testing.assert_allclose(grad.numpy(), (1 - sigmoid(x[0])) * x[0], rtol=1e-6)


def test_mask_keeps_padded_positions_out_of_batch_statistics():
    x = np.array([[[1.0, 10.0], [3.0, 14.0], [100.0, -50.0]]], "float32")   # [1, 3, 2]
    mask = np.array([[True, True, False]])
    expected = built_dice([0.5, -1.0], input_shape=(None, None, 2))(
        x[:, :2], training=True).numpy()
    dice = built_dice([0.5, -1.0], input_shape=(None, None, 2))
    out = dice(x, training=True, mask=mask).numpy()
    np.testing.assert_allclose(out[:, :2], expected, rtol=1e-5)
    np.testing.assert_allclose(dice.batch_norm.moving_mean.numpy(), [0.02, 0.12], rtol=1e-5)
    x2 = x.copy()
    x2[0, 2] = [-7.0, 3e4]
    fresh = built_dice([0.5, -1.0], input_shape=(None, None, 2))
    out2 = fresh(x2, training=True, mask=mask).numpy()
    np.testing.assert_allclose(out2[:, :2], out[:, :2], rtol=1e-6)


def test_config_round_trip_and_serialization():
    dice = built_dice(alpha=[0.3, -0.2], moving_mean=[0.5, -1.0], moving_var=[2.0, 0.5],
                      epsilon=1e-3)
    x = np.array([[1.0, -2.0], [0.5, 4.0]], "float32")
    expected = dice(x).numpy()
    config = dice.get_config()
    assert config["epsilon"] == 1e-3
    clone = Dice.from_config(config)
    assert clone.batch_norm.epsilon == 1e-3
    clone.build((None, 2))
    clone.set_weights(dice.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), expected, rtol=1e-6)

    serialized = keras.saving.serialize_keras_object(dice)
    assert serialized["registered_name"] == "qrec_tf>Dice"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, Dice) and restored.built     # built from its build config
    restored.set_weights(dice.get_weights())
    np.testing.assert_allclose(restored(x).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_training_normalisation_equals_keras_batch_normalization(masked):
    """Dice's own training path (issue 21: fewer passes) against Keras' BatchNormalization layer
    on the same inputs: outputs, moving statistics, and the gradients of the inputs and alpha."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (6, 5, 4)), tf.float32)
    mask = tf.constant(rng.random((6, 5)) < 0.7) if masked else None
    results = []
    for keras_layer in (False, True):
        dice = built_dice([0.3, -0.2, 0.1, 0.0], [0.0] * 4, [1.0] * 4,
                          input_shape=(None, None, 4))
        dice.keras_batch_norm_in_training = keras_layer
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = dice(x, training=True, mask=mask)
            loss = tf.reduce_sum(out * tf.range(4, dtype=tf.float32))
        grads = tape.gradient(loss, [x, dice.alpha.value])
        results.append([out.numpy(), *(g.numpy() for g in grads),
                        dice.batch_norm.moving_mean.numpy(),
                        dice.batch_norm.moving_variance.numpy()])
    # The moving statistics moved off their start (the comparison is not of untouched values).
    assert np.abs(results[0][3] - 0.0).max() > 1e-3
    for ours, keras_layer in zip(*results):
        np.testing.assert_allclose(ours, keras_layer, rtol=1e-5, atol=1e-6)


def test_training_on_no_rows_keeps_the_moving_statistics_finite():
    """A batch without rows (a packed attention's batch in which no history position is real):
    the batch moments are 0, so the moving ones decay towards 0 by the momentum, never NaN."""
    dice = Dice()
    dice.build((None, 3))
    dice.batch_norm.moving_mean.assign([1.0, 2.0, 3.0])
    out = dice(tf.zeros((0, 3)), training=True)
    assert out.shape == (0, 3)
    momentum = dice.batch_norm.momentum
    np.testing.assert_allclose(dice.batch_norm.moving_mean.numpy(),
                               np.array([1.0, 2.0, 3.0]) * momentum, rtol=1e-6)
    np.testing.assert_allclose(dice.batch_norm.moving_variance.numpy(), momentum, rtol=1e-6)
