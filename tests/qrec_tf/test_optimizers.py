"""LazyAdam: dense Adam on touched rows (duplicates summed first), untouched rows left alone;
FusedAdam: Keras' Adam in one kernel, to float rounding."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qrec_tf.layers.embedding import SparseEmbedding
from qrec_tf.optimizers import FusedAdam, LazyAdam, make_optimizer


def run(optimizer, ids, densify, steps=3):
    emb = SparseEmbedding(6, 2)
    emb.build((None,))
    emb.embeddings.assign(np.arange(12, dtype="float32").reshape(6, 2) / 10)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(emb(tf.constant(ids)) ** 2)
        grads = tape.gradient(loss, emb.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)  # the resource gather keeps it sparse
        if densify:
            grads = [tf.convert_to_tensor(g) for g in grads]
        optimizer.apply_gradients(zip(grads, emb.trainable_variables))
    return emb.embeddings.numpy()


def test_equals_dense_adam_when_every_row_is_touched_with_duplicates():
    ids = [0, 1, 2, 3, 4, 5, 4, 4]
    lazy = run(LazyAdam(learning_rate=0.1), ids, densify=False)
    dense = run(keras.optimizers.Adam(learning_rate=0.1), ids, densify=True)
    np.testing.assert_allclose(lazy, dense, rtol=1e-5, atol=1e-5)


def test_untouched_rows_and_their_moments_stay():
    optimizer = LazyAdam(learning_rate=0.1)
    table = run(optimizer, [1, 3, 3], densify=False)
    start = np.arange(12, dtype="float32").reshape(6, 2) / 10
    np.testing.assert_array_equal(table[[0, 2, 4, 5]], start[[0, 2, 4, 5]])
    assert not np.allclose(table[[1, 3]], start[[1, 3]])
    m = optimizer._momentums[0].numpy()
    assert np.all(m[[0, 2, 4, 5]] == 0) and np.all(m[[1, 3]] != 0)


def test_make_optimizer_names():
    assert isinstance(make_optimizer("lazy_adam", 0.01), LazyAdam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adamw2", 0.01)


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_fused_adam_equals_keras_adam_on_dense_gradients(weight_decay):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(50, 7)).astype("float32")
    gradients = [rng.normal(size=(50, 7)).astype("float32") for _ in range(5)]
    results = []
    for kind in (keras.optimizers.Adam, FusedAdam):
        variable = keras.Variable(start)
        optimizer = kind(learning_rate=0.01, weight_decay=weight_decay)
        step = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))
        for gradient in gradients:
            step(tf.constant(gradient))
        results.append(variable.numpy())
    assert np.abs(results[1] - start).max() > 0.04          # five steps of about lr each
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
