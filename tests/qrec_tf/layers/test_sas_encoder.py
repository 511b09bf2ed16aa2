"""SASEncoder: a numpy reference of the whole encoder, causality, padding, positions, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers import SASBlock, SASEncoder

DIM = 4


def random_weights(layer, seed=0):
    """Random values for every variable (LayerNorm gammas too), so no part is an identity."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=w.shape) * 0.5 + (1.0 if w.path.endswith("gamma") else 0.0))
            .astype("float32") for w in layer.weights]


def make_encoder(max_len=3, num_blocks=1, num_heads=2, dropout=0.0, seed=0, **kwargs):
    layer = SASEncoder(max_len, DIM, num_blocks=num_blocks, num_heads=num_heads,
                       dropout=dropout, **kwargs)
    layer(np.zeros((1, max_len, DIM), "float32"), np.ones((1, max_len), bool))
    layer.set_weights(random_weights(layer, seed))
    return layer


def layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.epsilon) * norm.gamma.numpy() + norm.beta.numpy()


def numpy_sas(layer, x, mask):
    """The encoder written out in numpy (inference mode), return_sequences=True."""
    seq_len = x.shape[1]
    real = mask[..., None]
    positions = layer.position_embedding.embeddings.numpy()[layer.max_len - seq_len:]
    h = np.where(real, x * np.sqrt(layer.dim) + positions, 0.0)
    allowed = np.tril(np.ones((seq_len, seq_len), bool))[None] & mask[:, None, :]   # [b, t, s]
    for block in layer.blocks:
        wq, bq, wk, bk, wv, bv, wo, bo = (w.numpy() for w in block.attention.weights)
        normed = layer_norm(h, block.attention_norm)
        q = np.einsum("btd,dhk->bthk", normed, wq) + bq
        k = np.einsum("bsd,dhk->bshk", h, wk) + bk
        v = np.einsum("bsd,dhk->bshk", h, wv) + bv
        logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(wq.shape[-1])
        logits = np.where(allowed[:, None], logits, -1e9)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = np.einsum("bhts,bshk->bthk", probs, v)
        h = h + np.einsum("bthk,hkd->btd", attended, wo) + bo
        f = np.maximum(layer_norm(h, block.ffn_norm) @ block.ffn_in.kernel.numpy()
                       + block.ffn_in.bias.numpy(), 0.0)
        h = h + f @ block.ffn_out.kernel.numpy() + block.ffn_out.bias.numpy()
        h = np.where(real, h, 0.0)
    return np.where(real, layer_norm(h, layer.final_norm), 0.0)


X = np.random.default_rng(7).normal(size=(3, 3, DIM)).astype("float32")
MASK = np.array([[True, True, True], [False, True, True], [False, False, False]])


@pytest.mark.parametrize("num_blocks,num_heads", [(1, 2), (2, 1)])
def test_matches_numpy_reference(num_blocks, num_heads):
    layer = make_encoder(num_blocks=num_blocks, num_heads=num_heads, ffn_dim=6)
    expected = numpy_sas(layer, X, MASK)
    sequences = layer(X, MASK, return_sequences=True).numpy()
    last = layer(X, MASK).numpy()
    assert sequences.shape == (3, 3, DIM) and last.shape == (3, DIM)
    np.testing.assert_allclose(sequences, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, expected[:, -1], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sequences[1, 0], 0.0)        # padded position
    np.testing.assert_array_equal(last[2], 0.0)                # row without any query


def test_output_at_k_ignores_later_positions():
    layer = make_encoder(max_len=5, num_blocks=2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, DIM)).astype("float32")
    mask = np.array([[True] * 5, [False, True, True, True, True]])
    base = layer(x, mask, return_sequences=True).numpy()
    for k in range(4):
        perturbed = x.copy()
        perturbed[:, k + 1:] += rng.normal(size=perturbed[:, k + 1:].shape).astype("float32") * 3
        out = layer(perturbed, mask, return_sequences=True).numpy()
        np.testing.assert_allclose(out[:, :k + 1], base[:, :k + 1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(out[0, k + 1], base[0, k + 1])    # later outputs do see them


@pytest.mark.parametrize("training", [False, True])
def test_padded_inputs_change_nothing(training):
    layer = make_encoder(max_len=4, num_blocks=2, dropout=0.0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, DIM)).astype("float32")
    mask = np.array([[False, False, True, True], [False, True, True, True], [False] * 4])
    noisy = x.copy()
    noisy[~mask] = rng.normal(size=(int((~mask).sum()), DIM)) * 1e3
    noisy[1, 0] = noisy[2, 1] = np.nan
    a = layer(x, mask, training=training, return_sequences=True).numpy()
    b = layer(noisy, mask, training=training, return_sequences=True).numpy()
    assert np.isfinite(b).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b[~mask], 0.0)


def test_positions_count_from_the_most_recent_slot():
    layer = make_encoder(max_len=5, num_blocks=2)
    short = layer(X, MASK).numpy()                                   # seq_len 3 < max_len 5
    padded_x = np.concatenate([np.zeros((3, 2, DIM), "float32"), X], axis=1)
    padded_mask = np.concatenate([np.zeros((3, 2), bool), MASK], axis=1)
    np.testing.assert_allclose(layer(padded_x, padded_mask).numpy(), short, rtol=1e-5, atol=1e-6)


def test_all_padded_row_is_zero_with_finite_gradients_and_dynamic_shapes():
    layer = make_encoder(max_len=4, num_blocks=2)
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, DIM)).astype("float32"))
    mask = np.array([[False] * 4, [False, False, True, True]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, mask, training=True)
        total = keras.ops.sum(out)
    np.testing.assert_array_equal(out.numpy()[0], 0.0)
    grads = tape.gradient(total, [x, *[w.value for w in layer.trainable_weights]])
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)
    np.testing.assert_array_equal(tf.convert_to_tensor(grads[0]).numpy()[0], 0.0)

    graph = tf.function(lambda x, m: layer(x, m), input_signature=[
        tf.TensorSpec([None, None, DIM], tf.float32), tf.TensorSpec([None, None], tf.bool)])
    np.testing.assert_allclose(graph(X, MASK).numpy(), layer(X, MASK).numpy(), rtol=1e-5)


def test_dropout_only_in_training():
    layer = make_encoder(max_len=3, num_blocks=1, dropout=0.5)
    inference = layer(X, MASK, training=False).numpy()
    np.testing.assert_allclose(layer(X, MASK).numpy(), inference)
    assert not np.allclose(layer(X, MASK, training=True).numpy()[:2], inference[:2])


def test_block_zeroes_padded_positions_so_none_carries_into_the_next_block():
    layer = make_encoder(max_len=3, num_blocks=1)
    block = layer.blocks[0]
    attention_mask = np.tril(np.ones((3, 3), bool))[None] & MASK[:, None, :]
    out = block(X, attention_mask, MASK).numpy()
    np.testing.assert_array_equal(out[~MASK], 0.0)
    assert np.abs(out[MASK]).min() > 0
    clone = SASBlock.from_config(block.get_config())
    clone(X, attention_mask, MASK)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(X, attention_mask, MASK).numpy(), out, rtol=1e-6)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="divisible"):
        SASEncoder(3, 6, num_heads=4)


def test_config_round_trip_and_serialization():
    layer = make_encoder(max_len=3, num_blocks=2, num_heads=2, dropout=0.1, ffn_dim=8,
                         name="queries")
    expected = layer(X, MASK).numpy()
    config = layer.get_config()
    assert {k: config[k] for k in ("max_len", "dim", "num_blocks", "num_heads", "dropout",
                                   "ffn_dim")} == dict(max_len=3, dim=DIM, num_blocks=2,
                                                       num_heads=2, dropout=0.1, ffn_dim=8)
    clone = SASEncoder.from_config(config)
    clone(X, MASK)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(X, MASK).numpy(), expected, rtol=1e-6)

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "qrec_tf>SASEncoder"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, SASEncoder) and len(restored.blocks) == 2
    restored(X, MASK)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(X, MASK).numpy(), expected, rtol=1e-6)


def test_weights_file_round_trip(tmp_path):
    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = SASEncoder(3, DIM, num_blocks=2, num_heads=2, dropout=0.0)

        def call(self, x, mask):
            return self.encoder(x, mask)

    model = Wrapper()
    model(X, MASK)
    model.encoder.set_weights(random_weights(model.encoder))
    path = str(tmp_path / "sas.weights.h5")
    model.save_weights(path)
    other = Wrapper()
    other(X, MASK)
    other.load_weights(path)
    assert len(other.encoder.weights) == len(model.encoder.weights) == 35   # 1 + 2 * 16 + 2
    for a, b in zip(model.encoder.weights, other.encoder.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(other(X, MASK).numpy(), model(X, MASK).numpy())


@pytest.mark.parametrize("training", [False, True])
def test_rows_encoded_by_span_equal_the_whole_rows(training):
    """bucketed (the default): rows grouped by the span of their real positions and cut to
    the last 2, 4, 8 or 9 positions give the outputs and gradients of encoding every position,
    for left-padded rows, rows with gaps or a padded last slot, and rows without any query
    (dropout 0, so that training draws no random numbers)."""
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(8, 9, DIM)).astype("float32"))
    mask = np.zeros((8, 9), bool)
    for row, span in enumerate([1, 2, 3, 4, 5, 9]):          # left-padded, spans of each group
        mask[row, 9 - span:] = True
    mask[5, 3] = False                                          # a gap inside the span
    mask[6, [0, 4]] = True                                      # the last slot is padding
    mask = tf.constant(mask)                                     # row 7: no real position
    results = []
    for bucketed in (False, True):
        layer = make_encoder(max_len=9, num_blocks=2, seed=4, bucketed=bucketed)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, mask, training=training)
            total = keras.ops.sum(out * np.arange(1, DIM + 1))
        grads = tape.gradient(total, [x, *[w.value for w in layer.trainable_weights]])
        results.append([out.numpy(), *(tf.convert_to_tensor(g).numpy() for g in grads)])
    for whole, by_span in zip(*results):
        np.testing.assert_allclose(by_span, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results[1][0][[6, 7]], 0.0)   # last slot padded, no query
    assert layer.get_config()["bucketed"] is True
