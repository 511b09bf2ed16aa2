"""DINAttention: hand-set weights, a numpy reference with Dice, masks, softmax, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers import DINAttention
from qrec_tf.layers.xla import static_shapes

QUERY = np.array([[1.0, 2.0], [1.0, 2.0]], "float32")
KEYS = np.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],
                 [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]], "float32")
MASK = np.array([[True, True, False], [False, False, False]])


def dot_product_attention(use_softmax):
    """Weights chosen so that the score is <q, k>: the hidden unit reads only the q * k block."""
    layer = DINAttention(hidden_units=(1,), activation="linear", use_softmax=use_softmax)
    layer(QUERY, KEYS, MASK)
    hidden = np.zeros((8, 1), "float32")
    hidden[6:8] = 1.0                                    # input = [q, k, q - k, q * k]
    layer.set_weights([hidden, np.zeros(1, "float32"), np.ones((1, 1), "float32"),
                       np.zeros(1, "float32")])
    return layer


def test_raw_scores_weight_the_keys_without_softmax():
    pooled, weights = dot_product_attention(False)(QUERY, KEYS, MASK, return_weights=True)
    # row 0: scores <q, k> = [1, 2, 15]; position 2 is padding.
    np.testing.assert_allclose(weights.numpy(), [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(pooled.numpy(), [[1.0, 2.0], [0.0, 0.0]])


def test_softmax_over_valid_positions_and_all_padded_row_is_zero():
    layer = dot_product_attention(True)
    pooled, weights = layer(QUERY, KEYS, MASK, return_weights=True)
    e1, e2 = np.exp(1.0), np.exp(2.0)
    np.testing.assert_allclose(weights.numpy(), [[e1 / (e1 + e2), e2 / (e1 + e2), 0.0],
                                                 [0.0, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), [[e1 / (e1 + e2), e2 / (e1 + e2)], [0.0, 0.0]],
                               rtol=1e-6)
    keys = tf.constant(KEYS)
    with tf.GradientTape() as tape:
        tape.watch(keys)
        out = keras.ops.sum(layer(QUERY, keys, MASK))
    grads = tape.gradient(out, [keys, *[w.value for w in layer.trainable_weights]])
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    np.testing.assert_array_equal(grads[0].numpy()[1], 0.0)   # padded keys get no gradient


def numpy_din(layer, query, keys, mask):
    """DIN with Dice in inference mode (moving statistics), from the layer's weights."""
    q = np.repeat(query[:, None], keys.shape[1], axis=1)
    keys = np.where(mask[..., None], keys, 0.0)
    x = np.concatenate([q, keys, q - keys, q * keys], -1)
    for dense, dice in zip(layer.dense_layers, layer.dice_layers):
        x = x @ dense.kernel.numpy() + dense.bias.numpy()
        mean = dice.batch_norm.moving_mean.numpy()
        var = dice.batch_norm.moving_variance.numpy()
        p = 1 / (1 + np.exp(-(x - mean) / np.sqrt(var + dice.epsilon)))
        x = p * x + (1 - p) * dice.alpha.numpy() * x
    scores = (x @ layer.score_dense.kernel.numpy() + layer.score_dense.bias.numpy())[..., 0]
    weights = np.where(mask, scores, 0.0)
    return (weights[..., None] * keys).sum(1), weights


def weights_for(layer, seed=2):
    """Random weights for every variable; moving variances positive."""
    rng = np.random.default_rng(seed)
    return [np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5 if "variance" in w.path
            else rng.normal(size=w.shape).astype("float32") for w in layer.weights]


def random_dice_attention():
    layer = DINAttention(hidden_units=(4, 3))
    layer(QUERY, KEYS, MASK)
    layer.set_weights(weights_for(layer))
    return layer


def test_dice_mlp_matches_numpy_reference():
    layer = random_dice_attention()
    assert len(layer.dice_layers) == 2 and not np.allclose(layer.dice_layers[0].alpha.numpy(), 0)
    pooled, weights = layer(QUERY, KEYS, MASK, return_weights=True)
    expected_pooled, expected_weights = numpy_din(layer, QUERY, KEYS, MASK)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled.numpy(), expected_pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_softmax", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_padded_keys_change_nothing(use_softmax, training):
    rng = np.random.default_rng(1)
    query = rng.normal(size=(3, 2)).astype("float32")
    keys = rng.normal(size=(3, 4, 2)).astype("float32")
    mask = np.array([[False, True, True, True], [False, False, False, True],
                     [False, False, False, False]])
    noisy = keys.copy()
    noisy[~mask] = rng.normal(size=(int((~mask).sum()), 2)) * 1e4
    noisy[0, 0] = np.nan
    outputs = []
    for k in (keys, noisy):
        layer = DINAttention(hidden_units=(4, 3), use_softmax=use_softmax)
        layer(query, keys, mask)
        layer.set_weights(weights_for(layer))
        outputs.append(layer(query, k, mask, training=training, return_weights=True))
    for a, b in zip(*outputs):
        assert np.isfinite(a.numpy()).all()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs[0][0].numpy()[2], 0.0)


def test_dice_batch_statistics_ignore_padded_positions():
    """Training mode: an extra all-padded column must not shift Dice's batch statistics."""
    rng = np.random.default_rng(3)
    query = rng.normal(size=(3, 2)).astype("float32")
    keys = rng.normal(size=(3, 3, 2)).astype("float32") + 2.0
    mask = np.array([[True, True, True], [False, True, True], [False, False, True]])
    padded_keys = np.concatenate([np.zeros((3, 1, 2), "float32"), keys], axis=1)
    padded_mask = np.concatenate([np.zeros((3, 1), bool), mask], axis=1)
    layer = random_dice_attention()
    short = layer(query, keys, mask, training=True)
    long = layer(query, padded_keys, padded_mask, training=True)
    np.testing.assert_allclose(long.numpy(), short.numpy(), rtol=1e-5, atol=1e-6)


def test_valid_keys_do_change_the_output():
    layer = random_dice_attention()
    keys = KEYS.copy()
    keys[0, 1] = [-3.0, 4.0]
    assert not np.allclose(layer(QUERY, keys, MASK).numpy()[0], layer(QUERY, KEYS, MASK).numpy()[0])


def test_non_dice_activation_and_shapes():
    layer = DINAttention(hidden_units=(5,), activation="sigmoid")
    query = np.ones((4, 3), "float32")
    keys = np.ones((4, 6, 3), "float32")
    pooled, weights = layer(query, keys, np.ones((4, 6), bool), return_weights=True)
    assert pooled.shape == (4, 3) and weights.shape == (4, 6)
    assert layer.dice_layers == [] and layer.dense_layers[0].activation is keras.activations.sigmoid
    assert layer.weights[0].shape == (12, 5)


@pytest.mark.parametrize("use_softmax", [False, True])
def test_config_round_trip_and_serialization(use_softmax):
    layer = DINAttention(hidden_units=(4, 3), use_softmax=use_softmax, name="att")
    layer(QUERY, KEYS, MASK)
    layer.set_weights(weights_for(layer))
    expected = layer(QUERY, KEYS, MASK).numpy()
    config = layer.get_config()
    assert config["hidden_units"] == [4, 3] and config["use_softmax"] is use_softmax
    clone = DINAttention.from_config(config)
    clone(QUERY, KEYS, MASK)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(QUERY, KEYS, MASK).numpy(), expected, rtol=1e-6)

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "qrec_tf>DINAttention"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, DINAttention) and restored.use_softmax is use_softmax
    restored(QUERY, KEYS, MASK)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(QUERY, KEYS, MASK).numpy(), expected, rtol=1e-6)


def test_weights_file_round_trip_keeps_dice_statistics(tmp_path):
    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.attention = DINAttention(hidden_units=(4, 3))

        def call(self, query, keys, mask):
            return self.attention(query, keys, mask)

    model = Wrapper()
    model(QUERY, KEYS, MASK)
    model.attention.set_weights(weights_for(model.attention))
    path = str(tmp_path / "din.weights.h5")
    model.save_weights(path)
    other = Wrapper()
    other(QUERY, KEYS, MASK)
    other.load_weights(path)
    for a, b in zip(model.attention.weights, other.attention.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(other(QUERY, KEYS, MASK).numpy(), model(QUERY, KEYS, MASK).numpy())


@pytest.mark.parametrize("use_softmax", [False, True])
def test_keys_shared_by_consecutive_queries_equal_repeated_keys(use_softmax):
    """Two users' histories, three candidate queries each: the key part computed once per user
    gives the values of the keys repeated for every candidate."""
    layer = DINAttention(hidden_units=(4, 3), use_softmax=use_softmax)
    layer(QUERY, KEYS, MASK)
    layer.set_weights(weights_for(layer, seed=5))
    queries = np.random.default_rng(0).normal(size=(6, 2)).astype("float32")
    shared, shared_weights = layer(queries, KEYS, MASK, queries_per_key_row=3,
                                   return_weights=True)
    repeated, repeated_weights = layer(queries, np.repeat(KEYS, 3, 0), np.repeat(MASK, 3, 0),
                                       return_weights=True)
    np.testing.assert_allclose(shared.numpy(), repeated.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shared_weights.numpy(), repeated_weights.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(shared_weights.numpy()[3:], 0.0)  # user 2: all padding


@pytest.mark.parametrize("training", [False, True])
def test_jit_compiled_attention_equals_the_plain_one(training):
    """jit_compile (XLA on the scoring and pooling): the same outputs, gradients and Dice
    statistics as without it, to float rounding."""
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=(8, 6)), tf.float32)
    keys = tf.constant(rng.normal(size=(8, 5, 6)), tf.float32)
    mask = tf.constant(rng.random((8, 5)) < 0.7)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        layer = DINAttention(hidden_units=(4, 3), jit_compile=jit)
        layer(query, keys, mask)
        assert layer.get_config()["jit_compile"] is jit
        with tf.GradientTape() as tape:
            tape.watch([query, keys])
            pooled, weights = layer(query, keys, mask, training=training, return_weights=True)
        grads = tape.gradient(pooled, [query, keys, *layer.trainable_variables])
        results.append([pooled.numpy(), weights.numpy(), *(g.numpy() for g in grads),
                        *(v.numpy() for v in layer.non_trainable_variables)])
    assert layer._compiled_pool is not None       # the jit path ran
    for plain, jit in zip(*results):
        np.testing.assert_allclose(jit, plain, rtol=1e-5, atol=1e-6)


def _outputs_and_gradients(layer_kwargs: dict, query, keys, mask, training: bool,
                           **call_kwargs) -> list[np.ndarray]:
    """Pooled, weights, the gradients of the pooled sum (inputs and weights) and the Dice
    statistics after one call of a DINAttention built from seed 0."""
    keras.utils.set_random_seed(0)
    layer = DINAttention(hidden_units=(4, 3), **layer_kwargs)
    layer(query, keys, mask, **call_kwargs)
    with tf.GradientTape() as tape:
        tape.watch([query, keys])
        pooled, weights = layer(query, keys, mask, training=training, return_weights=True,
                                **call_kwargs)
    grads = tape.gradient(pooled, [query, keys, *layer.trainable_variables])
    return [pooled.numpy(), weights.numpy(), *(g.numpy() for g in grads),
            *(v.numpy() for v in layer.non_trainable_variables)]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("use_softmax", [False, True])
@pytest.mark.parametrize("per_user", [None, 2])
def test_packed_pairs_equal_the_padded_computation(training, use_softmax, per_user):
    """Scoring only the real (query, key) pairs gives the outputs, gradients and Dice batch
    statistics of scoring every padded position, with one key row per query and with keys
    shared by 2 consecutive queries; row 3 has no real key at all."""
    rng = np.random.default_rng(1)
    users = 4
    query = tf.constant(rng.normal(size=(users * (per_user or 1), 6)), tf.float32)
    keys = tf.constant(rng.normal(size=(users, 5, 6)), tf.float32)
    mask = rng.random((users, 5)) < 0.5
    mask[3] = False
    mask = tf.constant(mask)
    results = [_outputs_and_gradients({"packed": packed, "use_softmax": use_softmax}, query, keys,
                                      mask, training, queries_per_key_row=per_user)
               for packed in (False, True)]
    for padded, packed in zip(*results):
        np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results[1][1][-(per_user or 1):], 0.0)   # row 3's weights


def test_packed_batch_without_any_real_key_is_finite():
    """A training batch in which no position is real (new users): pooled zeros and Dice moving
    statistics that decay towards 0, never NaN."""
    query = tf.ones((2, 6))
    keys = tf.ones((2, 5, 6))
    mask = tf.zeros((2, 5), bool)
    outputs = _outputs_and_gradients({"packed": True}, query, keys, mask, training=True)
    assert all(np.isfinite(array).all() for array in outputs)
    np.testing.assert_array_equal(outputs[0], 0.0)
    padded = _outputs_and_gradients({"packed": False}, query, keys, mask, training=True)
    for expected, got in zip(padded, outputs):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_packed_layer_scores_every_position_under_xla():
    """Traced inside static_shapes() (the export's compiled scoring) the layer runs the padded
    computation: no dynamic-shape ops reach XLA, and the values are the packed ones."""
    rng = np.random.default_rng(2)
    query = tf.constant(rng.normal(size=(3, 6)), tf.float32)
    keys = tf.constant(rng.normal(size=(3, 5, 6)), tf.float32)
    mask = tf.constant(rng.random((3, 5)) < 0.5)
    layer = DINAttention(hidden_units=(4, 3))
    eager = layer(query, keys, mask).numpy()
    compiled = tf.function(lambda q, k, m: layer(q, k, m), jit_compile=True)
    with static_shapes():                        # what the export's compiled scoring does
        ops_run = {op.type for op in compiled.get_concrete_function(
            query, keys, mask).graph.get_operations()}
        result = compiled(query, keys, mask).numpy()
    assert "Where" not in ops_run and "ScatterNd" not in ops_run
    np.testing.assert_allclose(result, eager, rtol=1e-5, atol=1e-6)
    plain = tf.function(lambda q, k, m: layer(q, k, m))
    plain_ops = {op.type for op in plain.get_concrete_function(
        query, keys, mask).graph.get_operations()}
    assert "Where" in plain_ops and "ScatterNd" in plain_ops        # packed outside XLA
