"""SearchMatch: time-decayed attribute matches against hand-computed values."""

import numpy as np
import pytest

from qrec_tf.layers.search_match import SearchMatch


def test_counts_each_attribute_at_each_half_life():
    # One user, two targets; three events with two attributes (e.g. category, sub-category).
    layer = SearchMatch(half_lives_hours=(1.0, 10.0))
    target = np.array([[5, 7], [6, 1]])             # target 2's second attribute is OOV (1)
    events = np.array([[[5, 7], [5, 8], [6, 1]]])   # the third event's second attribute is OOV
    ages = np.array([[0.0, 2.0, 10.0]], np.float32)
    mask = np.array([[True, True, True]])
    out = layer(target, events, ages, mask).numpy()
    assert out.shape == (2, 4)
    # target 1: attribute 0 matches events 1 and 2 (ages 0, 2), attribute 1 matches event 1.
    expected_1 = [np.log1p(1 + 0.5 ** 2), np.log1p(1 + 0.5 ** 0.2), np.log1p(1), np.log1p(1)]
    # target 2: attribute 0 matches event 3 (age 10); OOV never matches OOV.
    expected_2 = [np.log1p(0.5 ** 10), np.log1p(0.5), 0.0, 0.0]
    np.testing.assert_allclose(out, [expected_1, expected_2], rtol=1e-6)
    # A masked event counts for nothing.
    masked = layer(target, events, ages, np.array([[False, True, True]])).numpy()
    np.testing.assert_allclose(masked[0, 2:], 0.0)
    np.testing.assert_allclose(masked[0, 0], np.log1p(0.5 ** 2), rtol=1e-6)


def test_config_round_trip_and_bad_half_lives():
    layer = SearchMatch(half_lives_hours=(2.0, 3.0), name="m")
    assert SearchMatch.from_config(layer.get_config()).half_lives_hours == (2.0, 3.0)
    with pytest.raises(ValueError, match="positive"):
        SearchMatch(half_lives_hours=(0.0,))
