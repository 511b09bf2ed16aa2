"""AgeEmbedding and ages_in_hours against hand-computed buckets."""

import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers.age_embedding import AgeEmbedding, ages_in_hours


def test_ages_in_hours_from_raw_milliseconds_never_negative():
    ages = ages_in_hours(np.array([10 * 3_600_000], np.int64),
                         np.array([[7 * 3_600_000, 10 * 3_600_000, 11 * 3_600_000]], np.int64))
    np.testing.assert_allclose(ages.numpy(), [[3.0, 0.0, 0.0]])


def test_buckets_and_rows():
    layer = AgeEmbedding(2, boundaries_hours=(1.0, 24.0), embeddings_initializer="ones")
    out = layer(np.array([[0.5, 1.0, 30.0]], np.float32))
    assert out.shape == (1, 3, 2)
    # Edges belong to the bucket above them: 0.5 -> 0, 1.0 -> 1, 30 -> 2.
    assert layer.bucket(np.array([0.5, 1.0, 23.9, 24.0, 1e6], np.float32)).numpy().tolist() == [
        0, 1, 1, 2, 2]
    assert AgeEmbedding(2).table.embeddings_initializer.__class__.__name__ == "Zeros"


def test_config_round_trip_and_bad_boundaries():
    layer = AgeEmbedding(4, boundaries_hours=(2.0, 5.0))
    again = AgeEmbedding.from_config(layer.get_config())
    assert (again.dim, again.boundaries_hours) == (4, (2.0, 5.0))
    with pytest.raises(ValueError, match="sorted and positive"):
        AgeEmbedding(4, boundaries_hours=(5.0, 2.0))


def test_each_age_reads_its_bucket_row_and_the_gradient_lands_on_it():
    layer = AgeEmbedding(2, boundaries_hours=(1.0, 24.0))
    layer.build((1, 3))
    rows = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    layer.table.embeddings.assign(rows)
    ages = tf.constant([[0.5, 30.0, 40.0]])
    with tf.GradientTape() as tape:
        out = layer(ages)
        loss = tf.reduce_sum(out * tf.constant([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]))
    np.testing.assert_array_equal(out.numpy(), [rows[[0, 2, 2]]])
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.table.embeddings))
    np.testing.assert_array_equal(grad.numpy(), [[1.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
