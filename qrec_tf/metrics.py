"""Exact offline metrics: AUC, GAUC (per user, impression-weighted) and logloss."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties); NaN with a single class."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks = np.empty(labels.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average ranks
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
    defined = lambda x: None if np.isnan(x) else x
    return {"auc": defined(auc(labels, probabilities)), "gauc": defined(value),
            "gauc_users": users_counted,
            "logloss": logloss(labels, probabilities), "n": int(np.asarray(labels).size),
            "positives": int(np.asarray(labels).sum())}
