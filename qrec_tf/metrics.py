"""Exact offline metrics: AUC, GAUC (per user, impression-weighted) and logloss; the paired
bootstrap interval and DeLong's test of an AUC difference between two models on the same rows."""

from __future__ import annotations

import math

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties); NaN with a single class."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-user AUC over users with both classes.

    Returns (gauc, users counted); users with a single class are skipped (their AUC is undefined).
    """
    users = np.asarray(users).ravel()
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores).ravel()
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], labels[order], scores[order]
    boundaries = np.flatnonzero(np.diff(users)) + 1
    total, weight, counted = 0.0, 0, 0
    for lab, sco in zip(np.split(labels, boundaries), np.split(scores, boundaries)):
        if 0 < lab.sum() < lab.size:
            total += auc(lab, sco) * lab.size
            weight += lab.size
            counted += 1
    return (total / weight if weight else float("nan")), counted


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def all_metrics(users, labels, probabilities) -> dict:
    """Every metric as JSON-ready values: an undefined AUC or GAUC is None, not NaN.

    GAUC needs users with both classes; on a leave-one-out valid or test split every user has a
    single impression, so GAUC is None there (gauc_users = 0), by construction.
    """
    value, users_counted = gauc(users, labels, probabilities)

    def defined(x: float) -> float | None:
        return None if np.isnan(x) else x

    return {"auc": defined(auc(labels, probabilities)), "gauc": defined(value),
            "gauc_users": users_counted,
            "logloss": logloss(labels, probabilities), "n": int(np.asarray(labels).size),
            "positives": int(np.asarray(labels).sum())}


def paired_bootstrap_auc_difference(labels: np.ndarray, scores_a: np.ndarray,
                                    scores_b: np.ndarray, resamples: int = 2000, seed: int = 0,
                                    confidence: float = 0.95) -> dict:
    """AUC(a) - AUC(b) on the same rows, with a percentile bootstrap interval.

    Each resample draws the rows with replacement once and scores both models on that draw, so
    the interval is of the difference on paired rows (much narrower than two separate AUC
    intervals when the models agree on which rows are easy). Scores are [rows], or [runs, rows]
    for several runs of a model (e.g. seeds): the difference is then that of the mean AUC over
    runs, each run scored on the same draw. Resamples with a single class are drawn again.
    Returns {"difference", "low", "high", "confidence", "resamples", "p_not_above_zero": share of
    resamples with a difference <= 0}.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores_a, scores_b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    if not labels.size == scores_a.shape[1] == scores_b.shape[1]:
        raise ValueError(f"labels and both scorings need one value per row, got {labels.size}, "
                         f"{scores_a.shape[1]} and {scores_b.shape[1]}")
    if labels.all() or not labels.any():
        raise ValueError("the AUC needs both classes among the rows")

    def difference(rows):
        drawn = labels[rows]
        return (np.mean([auc(drawn, run[rows]) for run in scores_a])
                - np.mean([auc(drawn, run[rows]) for run in scores_b]))

    rng = np.random.default_rng(seed)
    differences = []
    while len(differences) < resamples:
        rows = rng.integers(0, labels.size, labels.size)
        if labels[rows].all() or not labels[rows].any():
            continue
        differences.append(difference(rows))
    differences = np.asarray(differences)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return {"difference": float(difference(np.arange(labels.size))), "low": float(low),
            "high": float(high), "confidence": confidence, "resamples": resamples,
            "p_not_above_zero": float(np.mean(differences <= 0.0))}


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def _delong_components(labels: np.ndarray, scores: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """labels bool [rows], scores [k, rows] (k scorings) -> (AUCs [k], per positive the share of
    negatives it outranks [k, positives], per negative the share of positives above it [k,
    negatives]): DeLong's structural components (rank formulation of Sun and Xu 2014)."""
    scores = np.asarray(scores, dtype=np.float64)
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong's variance needs at least two rows of each class")
    positives, negatives = scores[:, labels], scores[:, ~labels]
    k = scores.shape[0]
    aucs, v10, v01 = np.empty(k), np.empty((k, m)), np.empty((k, n))
    for i in range(k):
        within_pos, within_neg = _midranks(positives[i]), _midranks(negatives[i])
        overall = _midranks(scores[i])
        pos_ranks, neg_ranks = overall[labels], overall[~labels]
        aucs[i] = (pos_ranks.sum() - m * (m + 1) / 2.0) / (m * n)
        v10[i] = (pos_ranks - within_pos) / n          # per positive: negatives it outranks
        v01[i] = 1.0 - (neg_ranks - within_neg) / m    # per negative: positives above it
    return aucs, v10, v01


def auc_standard_error(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong's standard error of one AUC: sqrt(var(per-positive components) / positives +
    var(per-negative components) / negatives)."""
    labels = np.asarray(labels).astype(bool).ravel()
    _, v10, v01 = _delong_components(labels, np.ravel(scores)[None, :])
    return float(math.sqrt(np.var(v10[0], ddof=1) / v10.shape[1]
                           + np.var(v01[0], ddof=1) / v01.shape[1]))


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """DeLong's test of AUC(a) = AUC(b) for two scorings of the same rows (DeLong, DeLong and
    Clarke-Pearson 1988), with the rank formulation of Sun and Xu (2014).

    The AUC of each scoring is a U-statistic; its structural components (per positive: the share
    of negatives it outranks, per negative: the share of positives that outrank it) give the
    covariance of the two AUCs, and z = (AUC_a - AUC_b) / sd of the difference. Returns
    {"auc_a", "auc_b", "difference", "z", "p_value" (two-sided), "sd"}.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    aucs, v10, v01 = _delong_components(labels, np.stack([np.ravel(scores_a),
                                                          np.ravel(scores_b)]))
    m, n = v10.shape[1], v01.shape[1]
    covariance = np.cov(v10) / m + np.cov(v01) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = float(aucs[0] - aucs[1])
    if variance <= 0:
        z = 0.0 if difference == 0 else float("inf") * np.sign(difference)
    else:
        z = difference / math.sqrt(variance)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": difference,
            "z": float(z), "p_value": float(math.erfc(abs(z) / math.sqrt(2.0))),
            "sd": float(math.sqrt(max(variance, 0.0)))}
