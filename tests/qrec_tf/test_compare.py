"""qrec_tf.compare: the paired bootstrap and DeLong's test on cases with a known AUC difference,
against a pairwise re-implementation, and the CLI on predictions files."""

import json
import math

import numpy as np
import pytest

from qrec_tf import compare, evaluate, metrics


def _pairwise_delong(labels, a, b):
    """DeLong's structural components written as the O(m n) pair kernel psi (the 1988 paper)."""
    labels = labels.astype(bool)
    components = []
    for scores in (a, b):
        pos, neg = scores[labels], scores[~labels]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        components.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = components
    m, n = len(v10_a), len(v01_a)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + \
        (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a - auc_b, (auc_a - auc_b) / math.sqrt(variance)


def test_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a = np.round(labels + rng.normal(0, 1.0, 300), 1)        # rounded: many ties
    b = np.round(0.5 * labels + rng.normal(0, 1.0, 300), 1)
    result = metrics.delong_test(labels, a, b)
    difference, z = _pairwise_delong(labels, a, b)
    assert result["difference"] == pytest.approx(difference, abs=1e-12)
    assert result["z"] == pytest.approx(z, rel=1e-9)
    assert result["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert result["auc_a"] == pytest.approx(metrics.auc(labels, a), abs=1e-12)


def test_identical_scores_differ_by_nothing():
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.9, 0.4, 0.3, 0.8, 0.2])
    delong = metrics.delong_test(labels, scores, scores)
    assert delong["difference"] == 0.0 and delong["z"] == 0.0 and delong["p_value"] == 1.0
    boot = metrics.paired_bootstrap_auc_difference(labels, scores, scores, resamples=50)
    assert boot["low"] == boot["high"] == boot["difference"] == 0.0


def _known_case(n=400):
    """A ranks every row right (AUC 1); B gives the first half of the rows random scores (its
    exact AUC, from metrics.auc, is then well below 1)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, n)
    perfect = labels + rng.uniform(0, 0.5, n)                 # every positive above every negative
    noisy = np.where(np.arange(n) < n // 2, rng.uniform(0, 1.5, n), perfect)
    return labels, perfect, noisy


def test_bootstrap_interval_holds_a_known_difference_and_excludes_zero():
    labels, a, b = _known_case()
    expected = 1.0 - metrics.auc(labels, b)
    assert 0.1 < expected < 0.4
    boot = metrics.paired_bootstrap_auc_difference(labels, a, b, resamples=500, seed=3)
    assert boot["difference"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < boot["low"] < expected < boot["high"]
    assert boot["p_not_above_zero"] == 0.0
    # Swapping the models mirrors the difference.
    swapped = metrics.paired_bootstrap_auc_difference(labels, b, a, resamples=500, seed=3)
    assert swapped["difference"] == pytest.approx(-expected, abs=1e-12)
    assert swapped["high"] < 0 and swapped["p_not_above_zero"] == 1.0


def test_cli_on_predictions_files(tmp_path, capsys):
    labels, a, b = _known_case()
    paths = []
    for name, scores in (("a", a), ("b", b)):
        path = str(tmp_path / f"{name}.csv")
        evaluate.write_predictions(path, {"user_id": np.arange(len(labels)) + 10,
                                          "item_id": np.arange(len(labels)) + 500,
                                          "label": labels, "probability": scores / 2})
        paths.append(path)
    output = str(tmp_path / "compare.json")
    assert compare.main(["--predictions", *paths, "--resamples", "300", "--output", output]) == 0
    result = json.load(open(output))
    assert result["rows"] == len(labels) and result["auc_a"] == 1.0
    assert result["bootstrap"]["difference"] == pytest.approx(1.0 - metrics.auc(labels, b),
                                                              abs=1e-9)
    assert result["bootstrap"]["low"] > 0 and result["delong"]["p_value"] < 1e-6
    assert "paired bootstrap interval" in capsys.readouterr().out


def test_cli_refuses_predictions_of_different_rows(tmp_path, capsys):
    labels, a, b = _known_case(40)
    for name, users in (("a", np.arange(40)), ("b", np.arange(40)[::-1])):
        evaluate.write_predictions(str(tmp_path / f"{name}.csv"), {
            "user_id": users, "item_id": users, "label": labels, "probability": a})
    assert compare.main(["--predictions", str(tmp_path / "a.csv"),
                         str(tmp_path / "b.csv")]) == 2
    assert "not of the same rows" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    assert compare.main(["--predictions", str(tmp_path / "bad.csv"),
                         str(tmp_path / "a.csv")]) == 2
    assert "not a predictions file" in capsys.readouterr().err


def test_bootstrap_over_several_runs_is_of_the_mean_auc():
    labels, a, b = _known_case(200)
    runs_a, runs_b = np.stack([a, a[::-1]]), np.stack([b, a])
    expected = (np.mean([metrics.auc(labels, r) for r in runs_a])
                - np.mean([metrics.auc(labels, r) for r in runs_b]))
    boot = metrics.paired_bootstrap_auc_difference(labels, runs_a, runs_b, resamples=100)
    assert boot["difference"] == pytest.approx(expected, abs=1e-12)
    assert boot["low"] <= expected <= boot["high"]
    with pytest.raises(ValueError, match="one value per row"):
        metrics.paired_bootstrap_auc_difference(labels, runs_a[:, :10], runs_b)
