"""CategoryMatch against counts worked out by hand, padding, OOV and several targets per user."""

import numpy as np

from qrec_tf.layers.category_match import CategoryMatch


def test_counts_and_shares_by_hand():
    # user 0 clicked 4 items in its searches (one slot padded), user 1 none.
    clicked = np.array([[[5, 10], [5, 11], [6, 10], [5, 10], [0, 0]],
                        [[5, 10], [5, 10], [0, 0], [0, 0], [0, 0]]], np.int64)
    mask = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
    targets = np.array([[5, 10], [5, 10]], np.int64)
    out = CategoryMatch()(targets, clicked, mask).numpy()
    # user 0: category 5 three times, sub-category 10 three times, of 4 clicked items.
    np.testing.assert_allclose(out[0], [np.log(4), np.log(4), 0.75, 0.75], rtol=1e-6)
    # user 1: the matching rows are masked out.
    np.testing.assert_allclose(out[1], [0, 0, 0, 0])


def test_padding_and_oov_never_match_and_targets_per_user_stay_apart():
    clicked = np.array([[[1, 1], [0, 0], [7, 1]]], np.int64)     # OOV category 1, padding 0
    mask = np.array([[True, True, True]])
    # three candidates of the one user: OOV target, padding target, category 7
    targets = np.array([[1, 1], [0, 0], [7, 3]], np.int64)
    out = CategoryMatch()(targets, clicked, mask).numpy()
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out[0], [0, 0, 0, 0])
    np.testing.assert_allclose(out[1], [0, 0, 0, 0])
    np.testing.assert_allclose(out[2], [np.log(2), 0, 1 / 3, 0], rtol=1e-6)


def test_config_round_trip():
    layer = CategoryMatch(name="m")
    assert CategoryMatch.from_config(layer.get_config()).name == "m"
