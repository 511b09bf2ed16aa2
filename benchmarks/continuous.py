"""Continuous training over simulated days: warm start against a full retrain and a new-day-only
model (issue 33), and the hashed OOV buckets' measurement.

    python -m benchmarks.continuous [--days 5] [--users 300] [--items 1000] [--seed 0]
        [--config configs/queryrec.yaml] [--set train.epochs=2 ...] [--workdir bench_out/continuous]
        [--oov-buckets 0 16 64]

The protocol is the time split that a deployment sees (build_tfrecords --split-by time): a
model trained on the days up to D is validated on day D + 1 and tested on day D + 2. For each
training day D = 1 .. --days, three models, each tested on day D + 2's impressions (every
build below holds the same (user, item, label) test rows, checked):
  (a) warm: a build of days D .. D + 2 with --previous-data (day D - 1's warm build), trained on
      day D with --warm-start from day D - 1's warm model (day 1: from scratch, as (b));
  (b) full: a build of days 1 .. D + 2 from scratch, trained from scratch on days 1 .. D;
  (c) new day: trained from scratch on (a)'s build (day D alone);
(Carrying the optimizer's step and Adam slots into the warm start was measured and not kept:
docs/RESULTS.md, "Issue 33", at commit 68cf92d.)
Wall time: qrec_tf.train's training time (run.json train_seconds: the fit, tracing included;
not the build).

--oov-buckets: trains day 1 with each bucket count on a build with --min-count 2 (ids seen once
are OOV in training, so the buckets learn something) and scores day 2's test rows with the
export, where day 2's new ids are all unseen (every day-2 impression, and those of day 2's new
users alone): the measurement behind model.oov_buckets' default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil

import numpy as np

from pipelines import build_tfrecords
from pipelines.synthetic.days import generate_days
from qrec_tf import compare, evaluate, export, metrics, model_layout, train
from qrec_tf import schema as S
from qrec_tf.config import load_config

SMALL = ["model.embedding_dim=8", "model.mlp_units=[32]", "model.attention_units=[16]",
         "model.sas_blocks=1", "train.batch_size=256", "train.shuffle_buffer=20000",
         "train.epochs=2"]
BEAM = ["--direct_running_mode=in_memory", "--num-shards", "1"]


def build(log: str, data: str, previous: str | None = None, *extra: str) -> str:
    if not os.path.exists(os.path.join(data, "schema.json")):
        build_tfrecords.run(["--input", log, "--output", data, *BEAM, *extra,
                             *(["--previous-data", previous] if previous else [])])
    return data


def fit(config_args, data: str, model_dir: str, warm: str | None = None,
        overrides: tuple[str, ...] = ()) -> dict:
    """Trains (unless done) and returns {"auc": test AUC, "seconds": train time, "rows"}."""
    if not os.path.exists(model_layout.run_path(model_dir)):
        config = load_config(config_args.config, [*SMALL, *config_args.set, *overrides])
        train.train(config, data, model_dir, verbose=0, warm_start_dir=warm)
    run = model_layout.read_run(model_dir)
    _, model = evaluate.load_trained_model(model_dir, data)
    predictions = evaluate.predict(model, data, "test")
    rows = sorted(zip(predictions["user_id"].tolist(), predictions["item_id"].tolist(),
                      predictions["label"].tolist()))
    return {"auc": metrics.auc(predictions["label"], predictions["probability"]),
            "seconds": run["train_seconds"], "rows": rows}


def daily(args) -> list[dict]:
    work = args.workdir

    def log(first: int, last: int) -> str:
        path = os.path.join(work, f"log_{first}_{last}")
        if not os.path.exists(path):
            generate_days(path, last - first + 1, first, users=args.users, items=args.items,
                          seed=args.seed)
        return path

    def split(day: int) -> list[str]:   # train on days up to `day`, valid day + 1, test day + 2
        date = (datetime.date(2023, 5, 22) + datetime.timedelta(days=day - 1)).isoformat()
        return ["--split-by", "time", "--train-until", date, "--valid-days", "1"]

    table, previous_data, previous_model = [], None, None
    previous_variant = None
    for day in range(1, args.days + 1):
        all_data = build(log(1, day + 2), os.path.join(work, f"data_1_{day}"), None, *split(day))
        full = fit(args, all_data, os.path.join(work, f"full_day_{day}"))
        if day == 1:
            day_data, warm_dir = all_data, os.path.join(work, f"full_day_{day}")
            variant_dir = warm_dir
        else:
            day_data = build(log(day, day + 2), os.path.join(work, f"data_day_{day}"),
                             previous_data, *split(day))
            warm_dir = os.path.join(work, f"warm_day_{day}")
            warm = fit(args, day_data, warm_dir, warm=previous_model)
            new = fit(args, day_data, os.path.join(work, f"new_day_{day}"))
            variants = []
            if args.warm_variant:
                variant_dir = os.path.join(work, f"warm_{args.warm_variant}_day_{day}")
                variants.append((f"warm_{args.warm_variant}", fit(
                    args, day_data, variant_dir, warm=previous_variant,
                    overrides=tuple(args.warm_set))))
            row = {"day": day, "same_test_rows": warm["rows"] == full["rows"] == new["rows"],
                   "test_rows": len(warm["rows"])}
            for name, result in (("warm", warm), ("full", full), ("new_day", new), *variants):
                row[f"{name}_auc"], row[f"{name}_seconds"] = result["auc"], result["seconds"]
            table.append(row)
            print(json.dumps(row))
        previous_data, previous_model = day_data, warm_dir
        previous_variant = variant_dir if args.warm_variant else None
    return table


def oov(args) -> list[dict]:
    work = os.path.join(args.workdir, "oov")
    logs = [os.path.join(work, f"log_{day}") for day in (1, 2)]
    for day, path in enumerate(logs, start=1):
        if not os.path.exists(path):
            generate_days(path, 1, day, users=args.users, items=args.items, seed=args.seed)
    day1 = build(logs[0], os.path.join(work, "data_1"), None, "--min-count", "2")
    day2 = build(logs[1], os.path.join(work, "data_2"), day1, "--min-count", "2")
    results = []
    for buckets in args.oov_buckets:
        model_dir = os.path.join(work, f"model_{buckets}")
        if not os.path.exists(model_layout.run_path(model_dir)):
            config = load_config(args.config, [*SMALL, *args.set,
                                               f"model.oov_buckets={buckets}"])
            train.train(config, day1, model_dir, verbose=0)
        base = os.path.join(work, f"export_{buckets}")
        shutil.rmtree(base, ignore_errors=True)
        version = export.export(model_dir, base, xla=False)
        # every day-2 impression (all three splits): the day-1 model saw none of them
        parts = [compare.predict_saved_model(version, day2, split) for split in S.SPLITS]
        labels = np.concatenate([p["label"] for p in parts])
        scores = np.concatenate([p["probability"] for p in parts])
        users = np.concatenate([p["user_id"] for p in parts])
        new_users = users > args.users   # ids above day 1's are new on day 2
        results.append({"oov_buckets": buckets, "day2_auc": metrics.auc(labels, scores),
                        "day2_new_user_auc": metrics.auc(labels[new_users], scores[new_users]),
                        "rows": int(labels.size), "new_user_rows": int(new_users.sum())})
        print(json.dumps(results[-1]))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.continuous",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/queryrec.yaml")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--workdir", default="bench_out/continuous")
    parser.add_argument("--warm-variant", metavar="TAG",
                        help="also a warm chain warm_TAG trained with --warm-set's overrides")
    parser.add_argument("--warm-set", action="append", default=[],
                        help="config override of the --warm-variant chain (repeatable)")
    parser.add_argument("--oov-buckets", type=int, nargs="*", default=None,
                        help="measure these bucket counts instead of the daily table")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    if args.oov_buckets:
        result = {"oov": oov(args)}
    else:
        table = daily(args)
        result = {"daily": table,
                  "warm_within_0.005_of_full": all(r["warm_auc"] >= r["full_auc"] - 0.005
                                                   for r in table),
                  "warm_under_half_the_time": all(r["warm_seconds"] < r["full_seconds"] / 2
                                                  for r in table),
                  "warm_above_new_day": all(r["warm_auc"] > r["new_day_auc"] for r in table),
                  "mean": {k: float(np.mean([r[k] for r in table])) for k in table[0]
                           if k.endswith(("_auc", "_seconds"))}}
    path = os.path.join(args.workdir, "oov.json" if args.oov_buckets else "continuous.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "daily"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
