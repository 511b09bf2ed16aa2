"""Exact AUC / GAUC / logloss against brute-force pair counting and hand values."""

import itertools
import math

import numpy as np
import pytest

from qrec_tf import metrics


def brute_auc(labels, scores):
    pairs = [(s_p > s_n) + 0.5 * (s_p == s_n)
             for (l_p, s_p), (l_n, s_n) in itertools.product(zip(labels, scores), repeat=2)
             if l_p == 1 and l_n == 0]
    return sum(pairs) / len(pairs)


def test_auc_hand_values_and_ties():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([1, 0], [0.5, 0.5]) == 0.5
    assert metrics.auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_auc_and_gauc_match_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 12, 300)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes ties
    assert metrics.auc(labels, scores) == pytest.approx(brute_auc(labels, scores))
    total = weight = counted = 0
    for u in np.unique(users):
        lab, sco = labels[users == u], scores[users == u]
        if 0 < lab.sum() < lab.size:
            total += brute_auc(lab, sco) * lab.size
            weight += lab.size
            counted += 1
    value, n_users = metrics.gauc(users, labels, scores)
    assert value == pytest.approx(total / weight) and n_users == counted


def test_gauc_skips_single_class_users_and_logloss():
    value, n_users = metrics.gauc([1, 1, 2, 2, 2], [1, 1, 0, 1, 1], [0.9, 0.1, 0.3, 0.2, 0.8])
    assert n_users == 1 and value == pytest.approx(0.5)
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2)
    result = metrics.all_metrics([1, 1], [0, 1], [0.2, 0.7])
    assert result["n"] == 2 and result["positives"] == 1 and result["auc"] == 1.0


def test_auc_standard_error_by_hand():
    """labels 1 1 0 0, scores .9 .4 .6 .1: per-positive components (1, .5), per-negative
    (.5, 1), each with variance .125: SE = sqrt(.125 / 2 + .125 / 2)."""
    from qrec_tf.metrics import auc_standard_error

    labels, scores = np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1])
    assert auc_standard_error(labels, scores) == pytest.approx(np.sqrt(0.125), rel=1e-12)


def test_auc_standard_error_is_delongs_sd_against_a_constant_scoring():
    """A constant scoring's components have no variance: the sd of the difference is then the
    standard error of the other AUC."""
    from qrec_tf.metrics import auc_standard_error, delong_test

    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = labels + rng.normal(0, 1.5, 300)
    expected = delong_test(labels, scores, np.zeros(300))["sd"]
    assert auc_standard_error(labels, scores) == pytest.approx(expected, rel=1e-12)
