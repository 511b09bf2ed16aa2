"""BilinearSimilarity: tanh(a^T W b) by hand, orientation of W, shapes, serialization."""

import keras
import numpy as np

from qrec_tf.layers import BilinearSimilarity

W = np.array([[1.0, 2.0], [0.0, 1.0]], "float32")      # not symmetric: a^T W b != b^T W a
A = np.array([[1.0, 1.0], [0.5, -1.0]], "float32")
B = np.array([[[1.0, 0.0], [0.0, 1.0], [0.5, -1.0]],
              [[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]], "float32")


def similarity():
    layer = BilinearSimilarity(2)
    layer(A, B)
    layer.set_weights([W])
    return layer


def test_scores_by_hand():
    scores = similarity()(A, B).numpy()
    # row 0: a^T W = [1, 3] -> [1, 3, 0.5 - 3]; row 1: a^T W = [0.5, 0] -> [1, 0, 0.5]
    np.testing.assert_allclose(scores, np.tanh([[1.0, 3.0, -2.5], [1.0, 0.0, 0.5]]), rtol=1e-6)
    # the other orientation (b^T W a) would give tanh(1) for row 0, position 1
    assert abs(scores[0, 1] - np.tanh(1.0)) > 0.1


def test_single_item_per_row():
    scores = similarity()(A, B[:, 2]).numpy()
    assert scores.shape == (2,)
    np.testing.assert_allclose(scores, np.tanh([-2.5, 0.5]), rtol=1e-6)


def test_pairwise_scores_every_row_against_shared_items():
    scores = similarity().pairwise(A, B[0]).numpy()
    # a^T W: row 0 [1, 3], row 1 [0.5, 0] against the items [1, 0], [0, 1], [0.5, -1]
    np.testing.assert_allclose(scores, np.tanh([[1.0, 3.0, -2.5], [0.5, 0.0, 0.25]]), rtol=1e-6)


def test_config_round_trip_and_serialization():
    layer = BilinearSimilarity(2, kernel_initializer="ones", name="sim")
    layer(A, B)
    layer.set_weights([W])
    expected = layer(A, B).numpy()
    config = layer.get_config()
    assert config["dim"] == 2
    clone = BilinearSimilarity.from_config(config)
    clone(A, B)
    np.testing.assert_array_equal(clone.kernel.numpy(), np.ones((2, 2)))   # its initializer
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(A, B).numpy(), expected, rtol=1e-6)

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "qrec_tf>BilinearSimilarity"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, BilinearSimilarity)
    restored(A, B)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(A, B).numpy(), expected, rtol=1e-6)
