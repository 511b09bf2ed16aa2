"""How much a log's queries can say about its feed clicks, and how much they identify a user.

    python -m benchmarks.query_diagnostics --log LOG_DIR [--data DATA_DIR] [--window-hours 48]

From the KuaiSAR-format log (LOG_DIR: the CSVs of pipelines.synthetic or of KuaiSAR):
- the signal: each query is given the sub-category most of its results belong to; a feed
  impression is "after a search" when its user searched that item's sub-category in the
  `--window-hours` before it. The CTR of those impressions against the others bounds what the
  query side can add to the click model.
From the Beam job's output (DATA_DIR, optional):
- the fingerprint: how many training rows share each distinct query list (what the SAS encoder
  reads) and how many of those lists belong to one user only; the same for the feed history.

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


def search_signal(log_dir: str, window_hours: float = 48.0) -> dict:
    """{"impressions", "ctr", "after_search": {"rows", "share", "ctr"}, "other_ctr"}."""
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
    window = window_hours * _HOUR_MS
    clicks = {True: [], False: []}
    for row in _rows(log_dir, kuaisar.REC_INTER):
        t = float(row["timestamp"])
        times = searched.get((row["user_id"], subcategory.get(row["item_id"])), ())
        clicks[any(0 < t - s <= window for s in times)].append(int(row["click"]))
    n = len(clicks[True]) + len(clicks[False])
    return {"impressions": n, "ctr": round(float(np.mean(clicks[True] + clicks[False])), 4),
            "after_search": {"rows": len(clicks[True]), "share": round(len(clicks[True]) / n, 4),
                             "ctr": round(float(np.mean(clicks[True] or [np.nan])), 4)},
            "other_ctr": round(float(np.mean(clicks[False] or [np.nan])), 4)}


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
    parser.add_argument("--window-hours", type=float, default=48.0)
    args = parser.parse_args(argv)
    result = {"signal": search_signal(args.log, args.window_hours)}
    if args.data:
        result["fingerprint"] = fingerprint(args.data)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
