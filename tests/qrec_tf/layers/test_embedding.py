"""SparseEmbedding: keras' Embedding's values, gradients that stay sparse, config round trip."""

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.layers.embedding import SparseEmbedding


def test_lookups_equal_keras_embedding_and_gradients_touch_only_the_rows_used():
    sparse = SparseEmbedding(10, 3, name="sparse")
    dense = keras.layers.Embedding(10, 3)
    ids = np.array([[1, 4], [4, 9]])
    sparse.build(ids.shape)
    dense.build(ids.shape)
    dense.set_weights(sparse.get_weights())
    np.testing.assert_array_equal(sparse(ids).numpy(), dense(ids).numpy())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sparse(ids))
    gradient = tape.gradient(loss, sparse.embeddings.value)
    assert isinstance(gradient, tf.IndexedSlices)
    dense_gradient = tf.convert_to_tensor(gradient).numpy()
    np.testing.assert_array_equal(dense_gradient.sum(axis=1), [0, 3, 0, 0, 6, 0, 0, 0, 0, 3])


def test_float_ids_are_cast_and_config_round_trips():
    layer = SparseEmbedding(5, 2)
    np.testing.assert_array_equal(layer(np.array([2.0, 3.0])).numpy(),
                                  layer(np.array([2, 3])).numpy())
    clone = SparseEmbedding.from_config(layer.get_config())
    assert clone.input_dim == 5 and clone.output_dim == 2
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is SparseEmbedding
