"""InterestContrast (SESRec): co-attention weights, the similar / dissimilar split (with its
fallback) and the triplet loss, by hand; padding; serialization."""

import keras
import numpy as np

from qrec_tf.layers.interest_contrast import InterestContrast

NAN = np.nan
# Row 0: feed r1 = [1, 0], r2 = [0, 1] after one padded slot; search s1 = [1, 0], s2 = [0, 2].
# Row 1: the same feed sequence, no search at all.
REC = np.array([[[NAN, 5.0], [1.0, 0.0], [0.0, 1.0]],
                [[7.0, 7.0], [1.0, 0.0], [0.0, 1.0]]], "float32")
REC_MASK = np.array([[False, True, True], [False, True, True]])
SRC = np.array([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [NAN, 1.0]]], "float32")
SRC_MASK = np.array([[True, True], [False, False]])
MARGIN = 2.0


def layer():
    contrast = InterestContrast(2, margin=MARGIN)
    contrast(REC, REC_MASK, SRC, SRC_MASK)
    contrast.set_weights([np.eye(2, dtype="float32"),             # W: L = tanh(R S^T)
                          np.array([1.0, 0.0], "float32"),        # w_r
                          np.array([0.0, 1.0], "float32")])       # w_s
    return contrast


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_weights_split_and_loss_by_hand():
    out = {k: v.numpy() for k, v in layer()(REC, REC_MASK, SRC, SRC_MASK).items()}
    # Row 0: R S^T = [[1, 0], [0, 2]], L = [[tanh 1, 0], [0, tanh 2]].
    # Feed scores: sum_s (w_s . s) L[r, s] = [0, 2 tanh 2]; search scores: sum_r (w_r . r) L[r, s]
    # = [tanh 1, 0]. Softmax over two positions = a sigmoid of the difference.
    a_r2, a_s1 = sigmoid(2 * np.tanh(2.0)), sigmoid(np.tanh(1.0))
    np.testing.assert_allclose(out["rec_weights"][0], [0, 1 - a_r2, a_r2], rtol=1e-5)
    np.testing.assert_allclose(out["src_weights"][0], [a_s1, 1 - a_s1], rtol=1e-5)
    # threshold 1/2: r2 and s1 similar, r1 and s2 dissimilar
    assert out["rec_similar"][0].tolist() == [False, False, True]
    assert out["rec_dissimilar"][0].tolist() == [False, True, False]
    assert out["src_similar"][0].tolist() == [True, False]
    assert out["src_dissimilar"][0].tolist() == [False, True]
    # Row 1: no search, so every feed score is 0, the weights are uniform (1/2 >= 1/2): no
    # dissimilar position, which falls back to all valid ones; anchor = both means -> loss margin.
    np.testing.assert_allclose(out["rec_weights"][1], [0, 0.5, 0.5], rtol=1e-6)
    assert out["rec_similar"][1].tolist() == out["rec_dissimilar"][1].tolist() == [
        False, True, True]
    assert out["src_similar"][1].tolist() == out["src_dissimilar"][1].tolist() == [False, False]
    np.testing.assert_array_equal(out["src_weights"][1], [0, 0])
    # Triplet terms of row 0: anchor_R = [1 - a_r2, a_r2], similar mean r2, dissimilar mean r1;
    # anchor_S = [a_s1, 2 (1 - a_s1)], similar mean s1, dissimilar mean s2.
    anchor_r = np.array([1 - a_r2, a_r2])
    rec_row0 = max(np.linalg.norm(anchor_r - [0, 1]) - np.linalg.norm(anchor_r - [1, 0])
                   + MARGIN, 0)
    anchor_s = np.array([a_s1, 2 * (1 - a_s1)])
    src_row0 = max(np.linalg.norm(anchor_s - [1, 0]) - np.linalg.norm(anchor_s - [0, 2])
                   + MARGIN, 0)
    assert 0 < rec_row0 < MARGIN and 0 < src_row0 < MARGIN
    # feed term: mean over both rows (row 1 gives the margin); search term: row 0 only
    np.testing.assert_allclose(out["loss"], (rec_row0 + MARGIN) / 2 + src_row0, rtol=1e-5)


def test_padded_values_change_nothing():
    contrast = layer()
    base = contrast(REC, REC_MASK, SRC, SRC_MASK)
    rec, src = REC.copy(), SRC.copy()
    rec[:, 0] = 1e6
    src[1] = -3.0
    other = contrast(rec, REC_MASK, src, SRC_MASK)
    for key in base:
        np.testing.assert_array_equal(np.asarray(base[key]), np.asarray(other[key]), key)


def test_config_round_trip_and_serialization():
    original = layer()
    expected = original(REC, REC_MASK, SRC, SRC_MASK)["loss"].numpy()
    assert original.get_config()["margin"] == MARGIN
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(original))
    restored(REC, REC_MASK, SRC, SRC_MASK)
    restored.set_weights(original.get_weights())
    np.testing.assert_allclose(restored(REC, REC_MASK, SRC, SRC_MASK)["loss"].numpy(), expected,
                               rtol=1e-6)
