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


def test_events_sharing_an_age_count_once_each_at_that_age():
    # One user, one target; two ages with two event slots each; absent events are index 0.
    layer = SearchMatch(half_lives_hours=(1.0, 4.0))
    target = np.array([[5, 7]])
    events = np.array([[[[5, 7], [5, 0]],       # age 1 h: two events of category 5
                        [[0, 0], [6, 7]]]])     # age 4 h: one event, sub-category 7 only
    ages = np.array([[1.0, 4.0]], np.float32)
    out = layer(target, events, ages).numpy()
    expected = [np.log1p(2 * 0.5), np.log1p(2 * 0.5 ** 0.25),
                np.log1p(0.5 + 0.5 ** 4), np.log1p(0.5 ** 0.25 + 0.5)]
    np.testing.assert_allclose(out, [expected], rtol=1e-6)
    # The same events one per age (each slot its own event at its session's age): same counts.
    flat = events.reshape(1, 4, 2)
    flat_ages = np.repeat(ages, 2, axis=1)
    np.testing.assert_allclose(layer(target, flat, flat_ages).numpy(), out, rtol=1e-6)
