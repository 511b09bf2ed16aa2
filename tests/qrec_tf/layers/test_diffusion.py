"""GaussianDiffusion and Denoiser: schedules and coefficients by hand, q_sample statistics, the
loss and the reverse process with stub denoisers, step embeddings, shapes, serialization."""

import math

import keras
import numpy as np
import pytest

from qrec_tf.layers.denoiser import Denoiser, step_embedding
from qrec_tf.layers.diffusion import GaussianDiffusion, beta_schedule


@keras.saving.register_keras_serializable(package="qrec_tf_test")
class Constant(keras.layers.Layer):
    """A denoiser that predicts x_0 = value everywhere."""

    def __init__(self, value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def call(self, x_t, timesteps, training=None):
        return keras.ops.full_like(x_t, self.value)

    def get_config(self):
        return {**super().get_config(), "value": self.value}


class Identity(keras.layers.Layer):
    """A denoiser that predicts x_0 = x_t."""

    def call(self, x_t, timesteps, training=None):
        return x_t


def test_linear_schedule_by_hand():
    betas = beta_schedule("linear", 3, noise_scale=0.1, noise_min=0.01, noise_max=0.03,
                          fix_first_beta=False)
    np.testing.assert_allclose(betas, [0.001, 0.002, 0.003], rtol=1e-12)
    # DiffRec fixes the first variance to 1e-5
    np.testing.assert_allclose(beta_schedule("linear", 3, 0.1, 0.01, 0.03),
                               [1e-5, 0.002, 0.003], rtol=1e-12)


def test_linear_var_schedule_spaces_the_variance_evenly():
    betas = beta_schedule("linear-var", 3, noise_scale=0.1, noise_min=0.01, noise_max=0.03,
                          fix_first_beta=False)
    # 1 - abar_t = [0.001, 0.002, 0.003] -> beta_0 = 0.001, beta_t = 1 - abar_t / abar_{t-1}
    np.testing.assert_allclose(betas, [0.001, 1 - 0.998 / 0.999, 1 - 0.997 / 0.998], rtol=1e-12)
    layer = GaussianDiffusion(Constant(), steps=3, noise_scale=0.1, noise_min=0.01,
                              noise_max=0.03, fix_first_beta=False)
    np.testing.assert_allclose(layer.alphas_cumprod, [0.999, 0.998, 0.997], rtol=1e-12)
    np.testing.assert_allclose(layer.alphas_cumprod_prev, [1.0, 0.999, 0.998], rtol=1e-12)


def test_cosine_schedule_by_hand():
    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = beta_schedule("cosine", 2, fix_first_beta=False)
    # abar(1) = cos(pi/2)^2 ~ 0, so the last beta hits the 0.999 cap
    np.testing.assert_allclose(betas, [1 - abar(0.5) / abar(0.0), 0.999], rtol=1e-12)
    # cos(0.7916)^2 / cos(0.0125)^2
    assert betas[0] == pytest.approx(1 - 0.49381 / 0.99985, abs=1e-4)


def test_posterior_coefficients_snr_and_loss_weights_by_hand():
    layer = GaussianDiffusion(Constant(), steps=2, schedule="linear", noise_scale=1.0,
                              noise_min=0.1, noise_max=0.2, fix_first_beta=False)
    # betas [0.1, 0.2]; alphas [0.9, 0.8]; abar [0.9, 0.72]
    np.testing.assert_allclose(layer.alphas_cumprod, [0.9, 0.72], rtol=1e-12)
    np.testing.assert_allclose(layer.posterior_mean_coef1,
                               [1.0, 0.2 * math.sqrt(0.9) / 0.28], rtol=1e-12)
    np.testing.assert_allclose(layer.posterior_mean_coef2,
                               [0.0, 0.1 * math.sqrt(0.8) / 0.28], rtol=1e-12)
    np.testing.assert_allclose(layer.snr, [9.0, 0.72 / 0.28], rtol=1e-12)
    np.testing.assert_allclose(layer.loss_weights, [1.0, 9.0 - 0.72 / 0.28], rtol=1e-12)


def test_q_sample_mean_and_variance_over_many_draws():
    layer = GaussianDiffusion(Constant(), steps=4, schedule="linear", noise_scale=1.0,
                              noise_min=0.1, noise_max=0.4, fix_first_beta=False, seed=3)
    x_0 = np.tile(np.array([[1.0, -0.5, 0.0]], "float32"), (40_000, 1))
    t = np.full(40_000, 2)
    abar = 0.9 * 0.8 * 0.7
    draws = keras.ops.convert_to_numpy(layer.q_sample(x_0, t))
    np.testing.assert_allclose(draws.mean(axis=0), math.sqrt(abar) * x_0[0], atol=0.015)
    np.testing.assert_allclose(draws.var(axis=0), [1 - abar] * 3, rtol=0.03)
    # with explicit noise it is exactly the formula
    noise = np.ones_like(x_0[:2])
    exact = keras.ops.convert_to_numpy(layer.q_sample(x_0[:2], t[:2], noise))
    np.testing.assert_allclose(exact[0], math.sqrt(abar) * x_0[0] + math.sqrt(1 - abar),
                               rtol=1e-6)


def test_training_loss_is_the_weighted_mse_of_the_x0_prediction():
    layer = GaussianDiffusion(Constant(0.25), steps=2, schedule="linear", noise_scale=1.0,
                              noise_min=0.1, noise_max=0.2, fix_first_beta=False, reweight=False)
    x_input = np.zeros((2, 4), "float32")          # masked positives: the input lacks them
    x_target = np.array([[0.5, 0, 0, -0.5], [0.5, 0.5, 0, 0]], "float32")
    t, noise = np.array([0, 1]), np.zeros((2, 4), "float32")
    loss = keras.ops.convert_to_numpy(layer.training_loss(x_input, x_target, t, noise))
    # the constant prediction 0.25 against the target, not the input
    np.testing.assert_allclose(loss, [(0.0625 + 0.0625 * 2 + 0.5625) / 4,
                                      (0.0625 * 2 + 0.0625 * 2) / 4], rtol=1e-6)
    layer.reweight = True
    weighted = keras.ops.convert_to_numpy(layer.training_loss(x_input, x_target, t, noise))
    np.testing.assert_allclose(weighted, loss * [1.0, 9.0 - 0.72 / 0.28], rtol=1e-6)


def test_reverse_process_by_hand():
    x = np.array([[0.5, -0.5, 0.0]], "float32")
    # the last reverse step has c1 = 1, c2 = 0: the result is the denoiser's x_0 prediction
    constant = GaussianDiffusion(Constant(0.3), steps=3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(constant(x)), [[0.3] * 3], rtol=1e-6)
    # with x0_hat = x_t every step multiplies by (c1_t + c2_t), t = 2, 1 (t = 0 gives 1)
    identity = GaussianDiffusion(Identity(), steps=3, schedule="linear", noise_scale=1.0,
                                 noise_min=0.1, noise_max=0.3, fix_first_beta=False)
    factor = np.prod((identity.posterior_mean_coef1 + identity.posterior_mean_coef2)[1:])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(identity(x)), x * factor, rtol=1e-5)
    # sampling_steps > 0 noises x first: x_2 = sqrt(abar_1) x + sqrt(1 - abar_1) noise
    noised = GaussianDiffusion(Identity(), steps=3, schedule="linear", noise_scale=1.0,
                               noise_min=0.1, noise_max=0.3, fix_first_beta=False,
                               sampling_steps=2)
    noise = np.ones_like(x)
    start = math.sqrt(0.9 * 0.8) * x + math.sqrt(1 - 0.9 * 0.8) * noise
    np.testing.assert_allclose(keras.ops.convert_to_numpy(noised(x, noise)), start * factor,
                               rtol=1e-5)


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        beta_schedule("quadratic", 5)
    with pytest.raises(ValueError, match="noise_min <= noise_max"):
        beta_schedule("linear", 5, noise_min=0.1, noise_max=0.01)
    with pytest.raises(ValueError, match="sampling_steps"):
        GaussianDiffusion(Constant(), steps=5, sampling_steps=6)


def test_step_embedding_by_hand():
    embedding = keras.ops.convert_to_numpy(step_embedding(np.array([0, 1]), 4))
    # half = 2, frequencies exp(-ln(10000) * [0, 1] / 2) = [1, 0.01]
    np.testing.assert_allclose(embedding, [[1, 1, 0, 0],
                                           [math.cos(1), math.cos(0.01), math.sin(1),
                                            math.sin(0.01)]], rtol=1e-6)
    odd = keras.ops.convert_to_numpy(step_embedding(np.array([3]), 5))
    assert odd.shape == (1, 5) and odd[0, -1] == 0.0


def test_denoiser_shapes_and_that_the_step_matters():
    denoiser = Denoiser(hidden_units=[8, 6], step_embedding_dim=4)
    x = np.random.default_rng(0).normal(size=(3, 7)).astype("float32")
    out = keras.ops.convert_to_numpy(denoiser(x, np.array([0, 0, 0])))
    assert out.shape == (3, 7)
    other = keras.ops.convert_to_numpy(denoiser(x, np.array([4, 4, 4])))
    assert np.abs(out - other).max() > 1e-4
    widths = [w.shape for w in denoiser.trainable_weights if len(w.shape) == 2]
    assert widths == [(4, 4), (7 + 4, 8), (8, 6), (6, 7)]
    with pytest.raises(ValueError, match="dropout"):
        Denoiser(dropout=1.0)


@pytest.mark.parametrize("split_signs", [False, True])
def test_denoiser_equals_its_mlp_over_the_concatenated_input(split_signs):
    """The first layer runs over slices of its kernel; result and weight gradients are those of
    the product of the concatenation [inputs || steps] it stands for."""
    import tensorflow as tf

    denoiser = Denoiser([6, 5], step_embedding_dim=4, residual=True, split_signs=split_signs)
    x = np.random.default_rng(2).normal(size=(3, 7)).astype("float32")
    x[:, :2] = 0.0
    t = np.array([0, 2, 4])
    denoiser(x, t)

    def by_hand():
        steps = denoiser.step_projection(step_embedding(t, 4))
        inputs = tf.concat([tf.nn.relu(x), tf.nn.relu(-x)], 1) if split_signs else x
        h = tf.concat([inputs, steps], 1)
        for layer in denoiser.hidden:
            h = tf.tanh(h @ layer.kernel + layer.bias)
        return (h @ denoiser.output_layer.kernel + denoiser.output_layer.bias
                + denoiser.skip[0] * tf.nn.relu(x) - denoiser.skip[1] * tf.nn.relu(-x))

    results = []
    for function in (lambda: denoiser(x, t, training=True), by_hand):
        with tf.GradientTape() as tape:
            out = function()
            loss = tf.reduce_sum(out * np.arange(7, dtype="float32"))
        results.append((out, tape.gradient(loss, denoiser.trainable_variables)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert len(results[0][1]) == len(denoiser.trainable_variables) == 9
    for ours, theirs in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_denoiser_dropout_drops_both_signs_of_an_item_together():
    """One mask per item before the sign split: the first layer sees an item's click or
    non-click whole (times 1 / (1 - rate)) or not at all."""
    import tensorflow as tf

    denoiser = Denoiser([3], step_embedding_dim=2, dropout=0.5, split_signs=True)
    x = np.array([[1.0, -2.0, 0.5, -0.25] * 50], "float32")
    denoiser(x, np.array([0]))
    seen = []
    original = tf.matmul

    def spy(a, b, *args, **kwargs):
        seen.append(a)
        return original(a, b, *args, **kwargs)

    tf.matmul = spy
    try:
        denoiser(x, np.array([0]), training=True)
    finally:
        tf.matmul = original
    positive, negative = [keras.ops.convert_to_numpy(a)[0] for a in seen if a.shape[-1] == 200]
    kept = (positive + negative) != 0
    np.testing.assert_allclose(positive, np.where(kept, 2 * np.maximum(x[0], 0), 0))
    np.testing.assert_allclose(negative, np.where(kept, 2 * np.maximum(-x[0], 0), 0))
    assert 60 < kept.sum() < 140                  # about half of the 200 items


def test_config_round_trip_and_serialization():
    x = np.random.default_rng(1).normal(size=(2, 5)).astype("float32")
    layer = GaussianDiffusion(Denoiser([6], step_embedding_dim=3, name="mlp"), steps=4,
                              schedule="cosine", reweight=False, name="diffusion")
    expected = keras.ops.convert_to_numpy(layer(x))
    config = layer.get_config()
    assert config["steps"] == 4 and config["schedule"] == "cosine"
    assert config["denoiser"]["config"]["hidden_units"] == [6]
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "qrec_tf>GaussianDiffusion"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored.denoiser, Denoiser)
    restored.build(x.shape)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), expected, rtol=1e-6)
    np.testing.assert_array_equal(restored.betas, layer.betas)
