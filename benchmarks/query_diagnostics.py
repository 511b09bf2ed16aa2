"""How much a log's queries can say about its feed clicks, and how much they identify a user.

    python -m benchmarks.query_diagnostics --log LOG_DIR [--data DATA_DIR [--model-dir M ...]]
        [--window-hours 48]

From the KuaiSAR-format log (LOG_DIR: the CSVs of pipelines.synthetic or of KuaiSAR):
- the signal: each query is given the sub-category most of its results belong to; a feed
  impression is "after a search" when its user searched that item's sub-category in the
  `--window-hours` before it. The CTR of those impressions against the others bounds what the
  query side can add to the click model.
From the Beam job's output (DATA_DIR, optional):
- the fingerprint: how many training rows share each distinct query list (what the SAS encoder
  reads) and how many of those lists belong to one user only; the same for the feed history.
With trained models (--model-dir, optional): the ceiling (signal_ceiling), what the
after-search flag still adds to each model's scores on the test split.

docs/RESULTS.md, "QueryRec on logs it was not developed on", has the numbers of the regimes.
"""

from __future__ import annotations

import argparse
import collections
import csv
import glob
import json
import os

import numpy as np

from pipelines import kuaisar
from qrec_tf import schema

_HOUR_MS = 3_600_000


def _rows(log_dir: str, name: str):
    """The rows of <log_dir>/<name>.csv as dicts."""
    path = os.path.join(log_dir, f"{name}.csv")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: --log must hold the uncompressed KuaiSAR CSVs")
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def search_history(log_dir: str) -> tuple[dict[str, str], dict[tuple[str, str], list[int]]]:
    """(item -> sub-category, (user, sub-category) -> the times the user searched it), a
    query's sub-category being the one most of its results belong to."""
    subcategory = {row["item_id"]: row["second_level_category_id"]
                   for row in _rows(log_dir, kuaisar.ITEM_FEATURES)}
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    sessions = set()
    for row in _rows(log_dir, kuaisar.SRC_INTER):
        votes[row["keyword"]][subcategory.get(row["item_id"])] += 1
        sessions.add((row["user_id"], int(float(row["search_session_timestamp"])),
                      row["keyword"]))
    query_subcategory = {q: c.most_common(1)[0][0] for q, c in votes.items()}
    searched: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for user, timestamp, keyword in sessions:
        searched[(user, query_subcategory[keyword])].append(timestamp)
    return subcategory, searched


def after_search(history, user, item, timestamp, window_hours: float = 48.0) -> bool:
    """Whether `user` searched `item`'s sub-category in the window before `timestamp` (ms);
    `history` is search_history's result, ids as the log's strings."""
    subcategory, searched = history
    times = searched.get((user, subcategory.get(item)), ())
    return any(0 < timestamp - s <= window_hours * _HOUR_MS for s in times)


def search_signal(log_dir: str, window_hours: float = 48.0) -> dict:
    """{"impressions", "ctr", "after_search": {"rows", "share", "ctr"}, "other_ctr"}."""
    history = search_history(log_dir)
    clicks = {True: [], False: []}
    for row in _rows(log_dir, kuaisar.REC_INTER):
        flag = after_search(history, row["user_id"], row["item_id"], float(row["timestamp"]),
                            window_hours)
        clicks[flag].append(int(row["click"]))
    n = len(clicks[True]) + len(clicks[False])
    return {"impressions": n, "ctr": round(float(np.mean(clicks[True] + clicks[False])), 4),
            "after_search": {"rows": len(clicks[True]), "share": round(len(clicks[True]) / n, 4),
                             "ctr": round(float(np.mean(clicks[True] or [np.nan])), 4)},
            "other_ctr": round(float(np.mean(clicks[False] or [np.nan])), 4)}


def fit_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Maximum-likelihood logistic regression by Newton's method: x [rows, k], y [rows] in
    {0, 1} -> weights [k + 1] (the last is the intercept). A 1e-6 ridge keeps the Hessian
    invertible when a column separates the classes."""
    x = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    y = np.asarray(y, np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-6 * np.eye(len(w))
        w += np.linalg.solve(hessian, x.T @ (y - p))
    return w


def split_flags(history, data_dir: str, split: str, window_hours: float = 48.0) -> np.ndarray:
    """bool [rows]: the after-search flag (after_search) of every example of a split, in the
    split's file order (that of `qrec_tf.evaluate.predict`)."""
    from qrec_tf import data
    from qrec_tf import schema as S

    flags = []
    for batch in data.make_dataset(data_dir, split, 4096, shuffle=False,
                                   features=[S.USER_ID, S.ITEM_ID, S.TIMESTAMP]):
        flags.extend(after_search(history, str(u), str(i), float(t), window_hours)
                     for u, i, t in zip(batch[S.USER_ID].numpy(), batch[S.ITEM_ID].numpy(),
                                        batch[S.TIMESTAMP].numpy()))
    return np.asarray(flags, np.bool_)


def ceiling_of_predictions(flags: dict[str, np.ndarray], predictions: dict[str, dict],
                           resamples: int = 1000) -> dict:
    """What the after-search flag adds to a model's scores: a logistic regression of the click
    on [logit of the score, flag] fitted on the validation rows and scored on test.

    `flags` and `predictions` ({"valid", "test"} -> split_flags / `evaluate.predict` results,
    same row order). `flag_weight` is the flag's logit coefficient: what the flag still adds once
    the model's score is known (a model that had learnt the search signal leaves ~0);
    `difference` is the paired bootstrap interval of the test AUC of the combination minus the
    model's own."""
    from qrec_tf import metrics

    rows = {}
    for split in ("valid", "test"):
        scored = predictions[split]
        p = np.clip(np.asarray(scored["probability"], np.float64), 1e-7, 1 - 1e-7)
        rows[split] = (np.stack([np.log(p / (1 - p)), flags[split]], 1), scored["label"], p)
    weights = fit_logistic(*rows["valid"][:2])
    x, labels, p = rows["test"]
    combined = 1.0 / (1.0 + np.exp(-(x @ weights[:-1] + weights[-1])))
    return {"test_rows": int(labels.size), "flag_share": round(float(x[:, 1].mean()), 4),
            "score_weight": round(float(weights[0]), 4),
            "flag_weight": round(float(weights[1]), 4),
            "auc_model": round(metrics.auc(labels, p), 4),
            "auc_model_and_flag": round(metrics.auc(labels, combined), 4),
            "difference": metrics.paired_bootstrap_auc_difference(labels, combined, p,
                                                                   resamples)}


def signal_ceiling(log_dir: str, data_dir: str, model_dir: str, window_hours: float = 48.0,
                   resamples: int = 1000) -> dict:
    """How much of the search signal a trained model leaves out (ceiling_of_predictions, with
    the model's scores of the validation and test splits)."""
    from qrec_tf import evaluate

    history = search_history(log_dir)
    model = evaluate.load_trained_model(model_dir, data_dir)[1]
    splits = ("valid", "test")
    return ceiling_of_predictions(
        {split: split_flags(history, data_dir, split, window_hours) for split in splits},
        {split: evaluate.predict(model, data_dir, split) for split in splits}, resamples)


def fingerprint(data_dir: str) -> dict:
    """How unique the training rows' query lists and feed histories are."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(data_dir, "train", "*")))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    lists: dict[str, collections.Counter] = {"queries": collections.Counter(),
                                             "history": collections.Counter()}
    owners: dict[str, dict] = {name: collections.defaultdict(set) for name in lists}
    for raw in tf.data.TFRecordDataset(files, compression_type=compression):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        user = feature[schema.USER_ID].int64_list.value[0]
        keys = {"queries": tuple(feature[schema.QUERY_KEYS].bytes_list.value),
                "history": tuple(feature[schema.HIST_ITEM_IDS].int64_list.value)}
        for name, key in keys.items():
            lists[name][key] += 1
            owners[name][key].add(user)
    out = {}
    for name, counts in lists.items():
        rows = sum(counts.values())
        one_user = sum(c for key, c in counts.items() if len(owners[name][key]) == 1)
        out[name] = {"rows": rows, "distinct": len(counts),
                     "rows_per_distinct": round(rows / max(len(counts), 1), 2),
                     "rows_of_one_user_lists": round(one_user / max(rows, 1), 4)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, help="a KuaiSAR-format log directory")
    parser.add_argument("--data", help="the Beam job's output for that log (the fingerprint)")
    parser.add_argument("--model-dir", action="append", default=[],
                        help="a model trained on --data: how much the after-search flag still "
                             "adds to its scores (repeat for several models)")
    parser.add_argument("--window-hours", type=float, default=48.0)
    args = parser.parse_args(argv)
    if args.model_dir and not args.data:
        parser.error("--model-dir needs --data (the data the model was trained on)")
    result = {"signal": search_signal(args.log, args.window_hours)}
    if args.data:
        result["fingerprint"] = fingerprint(args.data)
    for model_dir in args.model_dir:
        result.setdefault("ceiling", {})[model_dir] = signal_ceiling(
            args.log, args.data, model_dir, args.window_hours)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
