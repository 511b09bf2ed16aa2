"""QueryEmbedding: key embedding + masked word mean, by hand; padding gives exact zeros."""

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.layers import QueryEmbedding

# Row 0 of each table is deliberately non-zero: padding must still contribute nothing.
KEY_TABLE = np.array([[9.0, 9.0], [1.0, 1.0], [2.0, 0.0], [0.0, 3.0]], "float32")
WORD_TABLE = np.array([[7.0, 7.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], "float32")
KEY_IDS = np.array([2, 1, 0, 3, 1])
WORD_IDS = np.array([[1, 2, 0], [0, 1, 3], [0, 0, 0], [0, 0, 0], [2, 0, 0]])
EXPECTED = np.array([
    [2.5, 0.5],    # key 2 + mean(w1, w2)
    [2.5, 2.0],    # OOV key 1 + mean(w1, w3): the words set the query apart
    [0.0, 0.0],    # padded query
    [0.0, 3.0],    # key 3, no words
    [1.0, 2.0],    # OOV key 1 + w2: a different unseen query, a different vector
], "float32")


def layer_with_tables(**kwargs):
    layer = QueryEmbedding(num_query_keys=4, num_words=4, dim=2, **kwargs)
    layer(KEY_IDS, WORD_IDS)
    layer.set_weights([KEY_TABLE, WORD_TABLE])
    return layer


def test_flat_queries_by_hand():
    out = layer_with_tables()(KEY_IDS, WORD_IDS).numpy()
    np.testing.assert_allclose(out, EXPECTED, rtol=1e-6)
    np.testing.assert_array_equal(out[2], [0.0, 0.0])       # exactly zero, not approximately


def test_query_lists_by_hand():
    keys = KEY_IDS[:4].reshape(2, 2)                        # [batch, q]
    words = WORD_IDS[:4].reshape(2, 2, 3)                   # [batch, q, words]
    out = layer_with_tables()(keys, words).numpy()
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out, EXPECTED[:4].reshape(2, 2, 2), rtol=1e-6)
    np.testing.assert_array_equal(out[1, 0], [0.0, 0.0])


def test_padding_rows_get_no_gradient():
    layer = layer_with_tables()
    with tf.GradientTape() as tape:
        out = keras.ops.sum(layer(KEY_IDS, WORD_IDS))
    key_grad, word_grad = (tf.convert_to_tensor(g) for g in tape.gradient(
        out, [layer.key_embedding.embeddings.value, layer.word_embedding.embeddings.value]))
    np.testing.assert_array_equal(key_grad.numpy()[0], 0.0)
    np.testing.assert_array_equal(word_grad.numpy()[0], 0.0)
    # word 1 appears in two queries with 2 words each: gradient 1/2 + 1/2 per component.
    np.testing.assert_allclose(word_grad.numpy()[1], [1.0, 1.0])


def test_tables_come_from_make_embedding():
    class OnesQueryEmbedding(QueryEmbedding):
        def _make_embedding(self, input_dim, name):
            return keras.layers.Embedding(input_dim, self.dim, embeddings_initializer="ones",
                                          name=f"ones_{name}")

    layer = OnesQueryEmbedding(4, 5, 3)
    out = layer(np.array([1, 0]), np.array([[1, 2], [0, 0]])).numpy()
    assert layer.key_embedding.name == "ones_key_embedding"
    assert layer.word_embedding.embeddings.shape == (5, 3)
    np.testing.assert_array_equal(out, [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])


def test_config_round_trip_and_serialization():
    layer = layer_with_tables(embeddings_initializer="ones", embeddings_regularizer="l2",
                              name="queries")
    config = layer.get_config()
    assert (config["num_query_keys"], config["num_words"], config["dim"]) == (4, 4, 2)
    clone = QueryEmbedding.from_config(config)
    assert isinstance(clone.embeddings_initializer, keras.initializers.Ones)
    assert isinstance(clone.key_embedding.embeddings_regularizer, keras.regularizers.L2)
    clone(KEY_IDS, WORD_IDS)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(KEY_IDS, WORD_IDS).numpy(), EXPECTED, rtol=1e-6)

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "qrec_tf>QueryEmbedding"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, QueryEmbedding)
    restored(KEY_IDS, WORD_IDS)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(KEY_IDS, WORD_IDS).numpy(), EXPECTED, rtol=1e-6)
