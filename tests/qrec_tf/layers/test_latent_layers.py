"""Latent diffusion's layers: the per-group encoder against a dense per-group Dense, the decoder's
scores, entry scores and closed-form sum of squares against the dense scores, an exact encoder ->
decoder round trip, and the latent loss against the same loss computed over dense [batch, N]."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers.denoiser import Denoiser
from qrec_tf.layers.diffusion import GaussianDiffusion
from qrec_tf.layers.group_decoder import GroupDecoder
from qrec_tf.layers.group_encoder import GroupEncoder
from qrec_tf.layers.latent_diffusion import LatentDiffusion
from qrec_tf.testing import variable_readers

SIZES = [3, 5, 2]          # groups of items: rows 0-2, 3-7, 8-9
UNITS = 4
# A batch of 3 sparse vectors over the 10 items (row 1 has no entry at all).
BATCH_ROW = np.array([0, 0, 0, 2, 2, 2, 2], np.int32)
ROW = np.array([0, 4, 9, 1, 2, 3, 8], np.int32)
VALUE = np.array([0.5, -0.5, 0.5, 0.5, -0.5, -0.5, 0.5], np.float32)


def dense(batch_row, row, value, batch=3, items=10):
    x = np.zeros((batch, items), np.float32)
    x[batch_row, row] = value
    return x


def random_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))


@pytest.mark.parametrize("split_signs", [False, True])
def test_encoder_is_a_dense_layer_per_group(split_signs):
    encoder = GroupEncoder(SIZES, UNITS, split_signs=split_signs)
    random_weights(encoder)
    z = encoder(BATCH_ROW, ROW, VALUE, batch=3).numpy()
    assert z.shape == (3, len(SIZES) * UNITS)
    x = dense(BATCH_ROW, ROW, VALUE)
    inputs = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], 1) if split_signs else x
    kernel, bias = encoder.kernel.numpy(), encoder.bias.numpy()
    starts = np.cumsum([0, *SIZES])
    for c in range(len(SIZES)):
        rows = np.arange(starts[c], starts[c + 1])
        if split_signs:
            rows = np.concatenate([rows, rows + 10])   # the negative entries' kernel rows
        expected = np.tanh(inputs[:, rows] @ kernel[rows] + bias[c])
        np.testing.assert_allclose(z[:, c * UNITS:(c + 1) * UNITS], expected, rtol=1e-5,
                                   atol=1e-6)
    # an empty vector is the bias alone
    np.testing.assert_allclose(z[1], np.tanh(bias).ravel(), rtol=1e-6)


def test_encoder_dropout_only_in_training():
    encoder = GroupEncoder(SIZES, UNITS, dropout=0.5)
    inference = encoder(BATCH_ROW, ROW, VALUE, batch=3, training=False).numpy()
    np.testing.assert_array_equal(inference, encoder(BATCH_ROW, ROW, VALUE, batch=3).numpy())
    trained = [encoder(BATCH_ROW, ROW, VALUE, batch=3, training=True).numpy() for _ in range(5)]
    assert any(not np.allclose(t, inference) for t in trained)


def test_decoder_scores_entries_and_sum_of_squares_agree():
    decoder = GroupDecoder(SIZES, UNITS)
    random_weights(decoder, seed=1)
    z = np.random.default_rng(2).normal(size=(3, len(SIZES) * UNITS)).astype(np.float32)
    scores = decoder(z).numpy()
    assert scores.shape == (3, 10)
    kernel, bias = decoder.kernel.numpy(), decoder.bias.numpy()
    group = np.repeat(np.arange(len(SIZES)), SIZES)
    for i in range(10):      # item i reads only its own group's latent slice
        c = group[i]
        np.testing.assert_allclose(scores[:, i], z[:, c * UNITS:(c + 1) * UNITS] @ kernel[i]
                                   + bias[i], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decoder.at(z, BATCH_ROW, ROW).numpy(), scores[BATCH_ROW, ROW],
                               rtol=1e-5, atol=1e-5)
    for offset in (0.0, 0.3):
        np.testing.assert_allclose(decoder.squared_sum(z, offset).numpy(),
                                   ((scores - offset) ** 2).sum(axis=1), rtol=1e-4)


def test_encoder_decoder_round_trip_is_exact_with_identity_weights():
    """Groups no wider than the latent units: identity kernels, no activation, zero biases give
    decoder(encoder(x)) = x."""
    encoder = GroupEncoder(SIZES, 5, activation=None)
    decoder = GroupDecoder(SIZES, 5)
    starts = np.cumsum([0, *SIZES])
    identity = np.zeros((10, 5), np.float32)
    for c, size in enumerate(SIZES):
        identity[starts[c]:starts[c + 1], :size] = np.eye(size)
    for layer in (encoder, decoder):
        layer.kernel.assign(identity)
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    x = dense(BATCH_ROW, ROW, VALUE)
    np.testing.assert_array_equal(decoder(encoder(BATCH_ROW, ROW, VALUE, batch=3)).numpy(), x)


def test_layers_serialize_and_restore():
    for layer in (GroupEncoder(SIZES, UNITS, split_signs=True, dropout=0.25, name="enc"),
                  GroupDecoder(SIZES, UNITS, name="dec")):
        restored = type(layer).from_config(layer.get_config())
        assert restored.get_config() == layer.get_config()
        assert [w.shape for w in restored.weights] == [w.shape for w in layer.weights]
    model = latent_model()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert restored.encoder.group_sizes == SIZES and restored.latent_width == 12
    assert [w.shape for w in restored.weights] == [w.shape for w in model.weights]


def latent_model(residual=True):
    denoiser = Denoiser([8], 4, residual=True)
    diffusion = GaussianDiffusion(denoiser, steps=3, noise_scale=0.1, reweight=False)
    return LatentDiffusion(GroupEncoder(SIZES, UNITS, split_signs=True),
                           diffusion, GroupDecoder(SIZES, UNITS), residual=residual)


@pytest.mark.parametrize("residual", [False, True])
def test_latent_loss_equals_the_loss_over_dense_scores(residual):
    model = latent_model(residual)
    random_weights(model, seed=3)
    hidden = np.array([False, False, True, False, True, False, False])  # masked out of the input
    input_value = np.where(hidden, 0.0, VALUE).astype(np.float32)
    timesteps = tf.constant([0, 2, 1])
    noise = tf.constant(np.random.default_rng(4).normal(size=(3, 12)).astype(np.float32))
    loss = model.training_loss(BATCH_ROW, ROW, input_value, VALUE, 3, timesteps, noise,
                               training=False).numpy()
    # The same by hand over dense [batch, N]: decode everything, add the skip, compare.
    z_t = model.diffusion.q_sample(model.encode(BATCH_ROW, ROW, input_value, 3), timesteps,
                                   noise)
    scores = model.decoder(model.diffusion.denoiser(z_t, timesteps, training=False)).numpy()
    x_in = dense(BATCH_ROW, ROW, input_value)
    if residual:
        skip = model.skip.numpy()
        scores += skip[:, 0] * np.maximum(x_in, 0) - skip[:, 1] * np.maximum(-x_in, 0)
    expected = ((scores - dense(BATCH_ROW, ROW, VALUE)) ** 2).sum(axis=1)
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)
    # item_scores: the reverse process decoded, with the skip at the input's entries
    z_0 = model.diffusion.denoise(model.encode(BATCH_ROW, ROW, input_value, 3))
    expected_scores = model.decoder(z_0).numpy()
    if residual:
        expected_scores += skip[:, 0] * np.maximum(x_in, 0) - skip[:, 1] * np.maximum(-x_in, 0)
    np.testing.assert_allclose(model.item_scores(BATCH_ROW, ROW, input_value, 3).numpy(),
                               expected_scores, rtol=1e-5, atol=1e-6)


def test_encoder_gradient_touches_only_the_entries_rows():
    encoder = GroupEncoder(SIZES, UNITS, split_signs=True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoder(BATCH_ROW, ROW, VALUE, batch=3))
    gradient = tape.gradient(loss, encoder.kernel)
    assert isinstance(gradient, tf.IndexedSlices)
    # positive entries read rows r, negative ones rows 10 + r
    expected = sorted(np.where(VALUE < 0, ROW + 10, ROW).tolist())
    assert sorted(gradient.indices.numpy().tolist()) == expected


def test_entry_reads_gather_rows_without_reading_the_whole_variable():
    """The encoder, the decoder's entry scores and the skip read their rows by a resource
    gather (layers.embedding.sparse_rows), never the whole variable: a whole read costs O(N) a
    step, and a copy of the table once LazyAdam has scattered rows into it."""
    model = latent_model()
    z = tf.constant(np.random.default_rng(5).normal(size=(3, 12)).astype(np.float32))

    @tf.function
    def entry_scores():
        return (model.decoder.at(z, BATCH_ROW, ROW) + model._skip(ROW, VALUE)
                + tf.reduce_sum(model.encode(BATCH_ROW, ROW, VALUE, 3)))

    for variable in (model.decoder.kernel, model.decoder.bias, model.skip,
                     model.encoder.kernel):
        assert variable_readers(entry_scores, variable) == {"ResourceGather"}, variable.path
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(entry_scores())
    for gradient in tape.gradient(loss, [model.decoder.kernel, model.decoder.bias, model.skip]):
        assert isinstance(gradient, tf.IndexedSlices)
        assert sorted(gradient.indices.numpy().tolist()) == sorted(ROW.tolist())


def test_mismatched_encoder_and_decoder_are_refused():
    with pytest.raises(ValueError, match="same groups"):
        LatentDiffusion(GroupEncoder(SIZES, UNITS), latent_model().diffusion,
                        GroupDecoder([10], UNITS))
    with pytest.raises(ValueError, match="group_sizes"):
        GroupEncoder([3, 0], UNITS)
