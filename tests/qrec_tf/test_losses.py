"""NIP and query-item contrastive losses against hand-computed values; masks; stability."""

import math

import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import losses
from qrec_tf.layers.embedding import mini_batch_aware_l2
from qrec_tf.testing import variable_readers


def softplus(x):
    return math.log1p(math.exp(x))


# Four examples, D = 2, P = 2, N = 2.
QUERY = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 3.0]], "float32")
POS = np.array([[[2.0, 0.0], [9.0, 9.0]],          # 2nd positive is padding (any value)
                [[0.0, 0.0], [0.0, 0.0]],          # no positive
                [[1.0, -2.0], [0.5, 0.5]],
                [[5.0, 5.0], [5.0, 5.0]]], "float32")
POS_MASK = np.array([[True, False], [False, False], [True, True], [False, False]])
NEG = np.array([[[1.0, 5.0], [0.0, 0.0]],
                [[0.0, -1.0], [3.0, 2.0]],
                [[0.0, 0.0], [0.0, 0.0]],          # no negative
                [[5.0, 5.0], [5.0, 5.0]]], "float32")
NEG_MASK = np.array([[True, False], [True, True], [False, False], [False, False]])


def test_nip_single_positive_is_minus_log_sigmoid():
    loss = losses.next_item_prediction_loss(QUERY[:1], POS[:1, :1], POS_MASK[:1, :1],
                                            NEG[:1, :0], NEG_MASK[:1, :0])
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), rel=1e-6)


def test_nip_by_hand_with_masks():
    loss = losses.next_item_prediction_loss(QUERY, POS, POS_MASK, NEG, NEG_MASK)
    example0 = softplus(-2.0) + softplus(1.0)                 # <q,e+> = 2, <q,e-> = 1
    example1 = (softplus(-1.0) + softplus(2.0)) / 2           # negatives only: logits -1, 2
    example2 = (softplus(1.0) + softplus(-1.0)) / 2           # positives only: logits -1, 1
    # example 3 has no valid target: excluded, whatever its (padded) vectors hold.
    assert loss.dtype == tf.float32 and loss.shape == ()
    assert float(loss) == pytest.approx((example0 + example1 + example2) / 3, rel=1e-6)
    changed = POS.copy()
    changed[0, 1] = [-50.0, 4.0]
    changed[3] = -7.0
    assert float(losses.next_item_prediction_loss(QUERY, changed, POS_MASK, NEG, NEG_MASK)) == \
        pytest.approx(float(loss), rel=1e-6)


def test_nip_stable_for_large_logits_and_zero_when_nothing_counts():
    query = tf.constant([[100.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(query)
        loss = losses.next_item_prediction_loss(query, -POS[:1, :1], POS_MASK[:1, :1],
                                                NEG[:1, :1], NEG_MASK[:1, :1])
    # logits -200 (positive) and 100 (negative): softplus(200) + softplus(100) = 300
    assert float(loss) == pytest.approx(300.0, rel=1e-5)
    assert np.isfinite(tape.gradient(loss, query).numpy()).all()

    query = tf.constant(QUERY)
    with tf.GradientTape() as tape:
        tape.watch(query)
        loss = losses.next_item_prediction_loss(
            query, POS, np.zeros_like(POS_MASK), NEG, np.zeros_like(NEG_MASK))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, query).numpy(), 0.0)


POS_SCORES = np.array([[0.5, 0.9], [0.2, -0.4], [0.7, 0.1], [0.3, 0.3]], "float32")
C_POS_MASK = np.array([[True, False], [True, True], [False, False], [True, True]])
NEG_SCORES = np.array([[0.1, -0.3, 0.9], [0.0, 0.0, 0.5], [0.1, 0.2, 0.3], [0.6, 0.6, 0.6]],
                      "float32")
C_NEG_MASK = np.array([[True, True, False], [True, False, True], [True, True, True],
                       [False, False, False]])


def test_contrastive_by_hand_with_masks():
    beta = 0.5
    loss = losses.query_item_contrastive_loss(POS_SCORES, C_POS_MASK, NEG_SCORES, C_NEG_MASK, beta)
    log_den0 = math.log(math.exp(0.1 / beta) + math.exp(-0.3 / beta))
    example0 = log_den0 - 0.5 / beta
    log_den1 = math.log(math.exp(0.0) + math.exp(0.5 / beta))
    example1 = ((log_den1 - 0.2 / beta) + (log_den1 + 0.4 / beta)) / 2
    # example 2: no positive; example 3: no negative -> both excluded.
    assert float(loss) == pytest.approx((example0 + example1) / 2, rel=1e-6)
    # The denominator holds negatives only (not InfoNCE): a positive far above every negative
    # drives the loss below zero.
    assert float(losses.query_item_contrastive_loss([[1.0]], [[True]], [[-1.0]], [[True]],
                                                    0.1)) == pytest.approx(-20.0, rel=1e-6)


def test_contrastive_masked_values_do_not_matter():
    base = losses.query_item_contrastive_loss(POS_SCORES, C_POS_MASK, NEG_SCORES, C_NEG_MASK, 0.5)
    pos, neg = POS_SCORES.copy(), NEG_SCORES.copy()
    pos[0, 1], pos[2] = -1.0, 1.0
    neg[0, 2], neg[1, 1], neg[3] = 1.0, -1.0, -1.0
    changed = losses.query_item_contrastive_loss(pos, C_POS_MASK, neg, C_NEG_MASK, 0.5)
    assert float(changed) == pytest.approx(float(base), rel=1e-6)


def test_contrastive_stable_with_small_temperature_and_finite_gradients():
    pos = tf.constant(POS_SCORES)
    neg = tf.constant(NEG_SCORES)
    with tf.GradientTape() as tape:
        tape.watch([pos, neg])
        loss = losses.query_item_contrastive_loss(pos, C_POS_MASK, neg, C_NEG_MASK, 0.001)
    # example 0: (-0.3/0.001 and 0.1/0.001 -> log-denominator ~ 100) - 500 = -400;
    # example 1: log-denominator ~ 500, minus mean(200, -400) = 600
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx((-400.0 + 600.0) / 2, rel=1e-4)
    grad_pos, grad_neg = tape.gradient(loss, [pos, neg])
    assert np.isfinite(grad_pos.numpy()).all() and np.isfinite(grad_neg.numpy()).all()
    # excluded examples and padded entries get no gradient
    np.testing.assert_array_equal(grad_pos.numpy()[[2, 3]], 0.0)
    np.testing.assert_array_equal(grad_neg.numpy()[[2, 3]], 0.0)
    assert grad_pos.numpy()[0, 1] == 0.0 and grad_neg.numpy()[1, 1] == 0.0

    loss = losses.query_item_contrastive_loss(POS_SCORES[2:], C_POS_MASK[2:],
                                              NEG_SCORES[2:], C_NEG_MASK[2:], 0.5)
    assert float(loss) == 0.0


def test_mini_batch_aware_l2_reads_only_the_touched_rows_of_a_keras_variable():
    """The models pass their Keras embedding variables: a whole read of one costs O(table) a
    step, and a copy of the table once LazyAdam has scattered rows into it."""
    import keras

    table = keras.Variable(np.ones((6, 2), np.float32))
    penalty = tf.function(lambda: mini_batch_aware_l2(
        table, tf.constant([1, 2, 2]), tf.ones(6)))
    assert variable_readers(penalty, table) == {"ResourceGather"}
    assert float(penalty()) == pytest.approx(4.0)      # rows 1 and 2, ||(1, 1)||^2 each


def test_mini_batch_aware_l2_by_hand():
    table = tf.Variable([[9.0, 9.0], [7.0, 7.0], [1.0, 2.0], [3.0, 0.0], [0.5, 0.5]])
    inverse_frequency = tf.constant([0.0, 0.0, 1 / 4, 1 / 2, 1.0])   # padding, OOV: not penalised
    # Rows 2, 3 and OOV touched (row 2 twice: it counts once); row 4 not in the batch.
    indices = tf.constant([[2, 3, 0], [2, 1, 0]], tf.int64)
    with tf.GradientTape() as tape:
        penalty = mini_batch_aware_l2(table, indices, inverse_frequency)
    # ||(1, 2)||^2 / 4 + ||(3, 0)||^2 / 2 = 5 / 4 + 9 / 2
    assert float(penalty) == pytest.approx(5 / 4 + 9 / 2, rel=1e-6)
    gradient = tape.gradient(penalty, table)
    assert isinstance(gradient, tf.IndexedSlices)   # only the touched rows
    np.testing.assert_allclose(tf.convert_to_tensor(gradient).numpy(),
                               [[0, 0], [0, 0], [0.5, 1.0], [3.0, 0.0], [0, 0]], rtol=1e-6)
