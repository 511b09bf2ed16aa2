"""Continuous training over simulated days: warm start against a full retrain and a new-day-only
model (issue 33), and the hashed OOV buckets' measurement.

    python -m benchmarks.continuous [--days 5] [--users 300] [--items 1000] [--seed 0]
        [--config configs/queryrec.yaml] [--set train.epochs=2 ...] [--workdir bench_out/continuous]
        [--warm-window 2] [--warm-context-days 2] [--warm-variant ep1 --warm-set train.epochs=1]
        [--test-on own|full] [--bootstrap 500] [--oov-buckets 0 16 64]

The protocol is the time split that a deployment sees (build_tfrecords --split-by time): a
model trained on the days up to D is validated on day D + 1 and tested on day D + 2. For each
training day D = 2 .. --days, three models, each tested on day D + 2's impressions (every
build below holds the same (user, item, label) test rows, checked):
  (a) warm: trained on the window of days F = max(1, D - W + 1) .. D (--warm-window W) with
      --warm-start from day D - 1's warm model (day 1's: (b) of day 1), with the --warm-set
      overrides (the default: 1 epoch), on a build with --previous-data (day D - 1's warm build)
      of the logs of days F - C .. D + 2 (--warm-context-days C) with --train-from F: the C
      days before the window are history only, as in the full build;
  (b) full: a build of days 1 .. D + 2 from scratch, trained from scratch on days 1 .. D;
  (c) new day: trained from scratch on day D alone (a build of days D .. D + 2's logs);
and per day the paired 95% bootstrap intervals of AUC(a) - AUC(b) and AUC(a) - AUC(c) on the
same test rows. (Carrying the optimizer's step and Adam slots into the warm start was measured
and not kept: docs/RESULTS.md, "Issue 33", at commit 68cf92d.)
Wall time: qrec_tf.train's training time (run.json train_seconds: the fit, tracing included;
not the build); examples: epochs run x training rows, the work whatever the machine's load.
Models, builds and logs are cached in --workdir by name: a chain of other flags reuses (b), (c).

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
from pipelines.synthetic.days import DAYS_MANIFEST, generate_days
from qrec_tf import compare, evaluate, export, metrics, model_layout, train
from qrec_tf import schema as S
from qrec_tf.config import load_config

SMALL = ["model.embedding_dim=8", "model.mlp_units=[32]", "model.attention_units=[16]",
         "model.sas_blocks=1", "train.batch_size=256", "train.shuffle_buffer=20000",
         "train.epochs=2"]
BEAM = ["--direct_running_mode=in_memory", "--num-shards", "1"]
# The warm chain of the daily table by default: the last 2 days, 1 epoch, the 2 days before
# them as history only; the closest to the full retrain at under half its work of the chains
# measured (docs/RESULTS.md, issue 33, at 1,000 users).
DEFAULT_WINDOW, DEFAULT_CONTEXT = 2, 2
DEFAULT_VARIANT, DEFAULT_WARM_SET = "ep1", ("train.epochs=1",)
DEFAULT_TEST_ON = "own"


def build(log: str, data: str, previous: str | None = None, *extra: str) -> str:
    if not os.path.exists(os.path.join(data, "schema.json")):
        build_tfrecords.run(["--input", log, "--output", data, *BEAM, *extra,
                             *(["--previous-data", previous] if previous else [])])
    return data


def fit(config_args, data: str, model_dir: str, warm: str | None = None,
        overrides: tuple[str, ...] = (), test_data: str | None = None) -> dict:
    """Trains (unless done) and returns {"auc": test AUC, "seconds": train time, "rows",
    "labels", "scores"}: rows (user, item, label) sorted, labels and scores in that order (a
    stable sort of the split's file order, so that two builds' rows pair one to one).
    `test_data`: score test/ of that build instead, through the model's export (its own
    vocabularies map the build's ids, as serving does)."""
    if not os.path.exists(model_layout.run_path(model_dir)):
        config = load_config(config_args.config, [*SMALL, *config_args.set, *overrides])
        train.train(config, data, model_dir, verbose=0, warm_start_dir=warm)
    run = model_layout.read_run(model_dir)
    if test_data is None or test_data == data:
        _, model = evaluate.load_trained_model(model_dir, data)
        predictions = evaluate.predict(model, data, "test")
    else:
        version = os.path.join(model_dir + "_export", "1")
        if not os.path.exists(os.path.join(version, "saved_model.pb")):
            shutil.rmtree(model_dir + "_export", ignore_errors=True)
            version = export.export(model_dir, model_dir + "_export", version=1, xla=False)
        predictions = compare.predict_saved_model(version, test_data, "test")
    order = np.lexsort((predictions["label"], predictions["item_id"], predictions["user_id"]))
    rows = list(zip(predictions["user_id"][order].tolist(), predictions["item_id"][order].tolist(),
                    predictions["label"][order].tolist()))
    with open(os.path.join(data, S.STATS_FILE)) as f:
        train_rows = json.load(f)["examples"]["train"]["count"]
    return {"auc": metrics.auc(predictions["label"], predictions["probability"]),
            "seconds": run["train_seconds"], "rows": rows,
            # the training work, whatever the machine's load: examples fed to the fit
            "examples": run["epochs_run"] * train_rows,
            "labels": predictions["label"][order], "scores": predictions["probability"][order]}


def chain_name(window: int, variant: str | None, context: int = 0) -> str:
    """The warm chain's directory tag: warm (one day), warm_w2, warm_w2c2_TAG, ..."""
    return ("warm" + (f"_w{window}" if window > 1 or context else "")
            + (f"c{context}" if context else "") + (f"_{variant}" if variant else ""))


def paired(models: dict[str, dict], against: str, resamples: int, seed: int = 0) -> dict:
    """AUC(against) - AUC(other) for every other model on the same test rows, each with its
    paired 95% percentile bootstrap interval: every resample draws the rows once and scores all
    models on that draw (metrics.paired_bootstrap_auc_difference's method, one draw for all)."""
    base = models[against]
    for name, result in models.items():
        if result["rows"] != base["rows"]:
            raise RuntimeError(f"{against}'s and {name}'s test rows differ: they cannot be paired")
    labels = np.asarray(base["labels"]).astype(bool)
    others = [name for name in models if name != against]
    rng, draws = np.random.default_rng(seed), []
    while len(draws) < resamples:
        rows = rng.integers(0, labels.size, labels.size)
        if labels[rows].all() or not labels[rows].any():
            continue
        auc = metrics.auc(labels[rows], base["scores"][rows])
        draws.append([auc - metrics.auc(labels[rows], models[name]["scores"][rows])
                      for name in others])
    low, high = np.quantile(np.asarray(draws), [0.025, 0.975], axis=0)
    return {name: {"difference": base["auc"] - models[name]["auc"], "low": float(low[i]),
                   "high": float(high[i])} for i, name in enumerate(others)}


def daily(args) -> list[dict]:
    """Per training day D >= 2: the warm chain (--warm-window days, --warm-set overrides)
    against the full retrain and the new-day model, on the same day D + 2 test rows."""
    work = args.workdir

    def log(first: int, last: int) -> str:
        path = os.path.join(work, f"log_{first}_{last}")
        if not os.path.exists(os.path.join(path, DAYS_MANIFEST)):   # written last
            generate_days(path, last - first + 1, first, users=args.users, items=args.items,
                          seed=args.seed)
        return path

    def date(day: int) -> str:
        return (datetime.date(2023, 5, 22) + datetime.timedelta(days=day - 1)).isoformat()

    def split(day: int) -> list[str]:   # train on days up to `day`, valid day + 1, test day + 2
        return ["--split-by", "time", "--train-until", date(day), "--valid-days", "1"]

    chain = chain_name(args.warm_window, args.warm_variant, args.warm_context_days)
    table = []
    previous_day_data = previous_window_data = previous_warm = None
    for day in range(1, args.days + 1):
        all_data = build(log(1, day + 2), os.path.join(work, f"data_1_{day}"), None, *split(day))
        full = fit(args, all_data, os.path.join(work, f"full_day_{day}"))
        if day == 1:   # every chain starts from the full retrain of day 1 (the same model)
            previous_day_data = previous_window_data = all_data
            previous_warm = os.path.join(work, "full_day_1")
            continue
        # the new-day model's build: day D's logs (and the test days) on yesterday's vocabularies
        day_data = build(log(day, day + 2), os.path.join(work, f"data_day_{day}"),
                         previous_day_data, *split(day))
        # --test-on full: every model scored on the full build's test rows, whose features
        # hold every earlier day's history (what serving sends), not only its own build's days
        test_data = all_data if args.test_on == "full" else None
        new = fit(args, day_data, os.path.join(work, f"new_day_{day}"), test_data=test_data)
        first = max(1, day - args.warm_window + 1)
        # --warm-context-days C: the build also reads the C days before the window, whose
        # impressions are only history (build_tfrecords --train-from), so the window's first
        # examples see earlier clicks and searches as the full build's do
        logs_from = max(1, first - args.warm_context_days)
        tag = chain_name(args.warm_window, None, args.warm_context_days)[len("warm"):]
        window_data = build(
            log(logs_from, day + 2), os.path.join(work, f"data{tag}_day_{day}"),
            previous_window_data, *split(day),
            *(["--train-from", date(first)] if logs_from < first else [])) if tag else day_data
        warm_dir = os.path.join(work, f"{chain}_day_{day}")
        warm = fit(args, window_data, warm_dir, warm=previous_warm,
                   overrides=tuple(args.warm_set), test_data=test_data)
        row = {"day": day, "chain": chain, "window_days": f"{first}-{day}",
               "history_from_day": logs_from,
               "test_on": args.test_on,
               "same_test_rows": warm["rows"] == full["rows"] == new["rows"],
               "test_rows": len(warm["rows"])}
        for name, result in (("warm", warm), ("full", full), ("new_day", new)):
            row[f"{name}_auc"], row[f"{name}_seconds"] = result["auc"], result["seconds"]
        row["warm_over_full_time"] = warm["seconds"] / full["seconds"]
        row["warm_over_full_examples"] = warm["examples"] / full["examples"]
        if args.bootstrap:
            intervals = paired({"warm": warm, "full": full, "new_day": new}, "warm",
                               args.bootstrap)
            row["warm_minus_full"] = intervals["full"]
            row["warm_minus_new_day"] = intervals["new_day"]
        table.append(row)
        print(json.dumps(row), flush=True)
        previous_day_data, previous_window_data, previous_warm = day_data, window_data, warm_dir
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


def bar(table: list[dict]) -> dict:
    """Issue 33's benchmark bar, day by day: within 0.005 of the full retrain (or above), under
    half its training time, above the new-day-only model."""
    return {"warm_within_0.005_of_full": all(r["warm_auc"] >= r["full_auc"] - 0.005
                                             for r in table),
            "warm_under_half_the_time": all(r["warm_over_full_time"] < 0.5 for r in table),
            "warm_above_new_day": all(r["warm_auc"] > r["new_day_auc"] for r in table)}


def markdown(table: list[dict]) -> str:
    """The table of docs/RESULTS.md, issue 33 (intervals: paired 95% bootstrap)."""
    def interval(row, key):
        if key not in row:
            return f"{row['warm_auc'] - row[key.replace('warm_minus_', '') + '_auc']:+.4f}"
        d = row[key]
        return f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
    lines = ["| day D | window | test rows | warm AUC | full AUC | new day AUC | warm - full | "
             "warm - new day | warm s | full s | new day s | warm / full time | "
             "warm / full examples |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['day']} | {r['window_days']} | {r['test_rows']:,} | "
                     f"{r['warm_auc']:.4f} | {r['full_auc']:.4f} | {r['new_day_auc']:.4f} | "
                     f"{interval(r, 'warm_minus_full')} | {interval(r, 'warm_minus_new_day')} | "
                     f"{r['warm_seconds']:.1f} | {r['full_seconds']:.1f} | "
                     f"{r['new_day_seconds']:.1f} | {r['warm_over_full_time']:.2f} | "
                     f"{r['warm_over_full_examples']:.2f} |")
    return "\n".join(lines)


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
    parser.add_argument("--warm-window", type=int, default=DEFAULT_WINDOW, metavar="W",
                        help="the warm model trains on the last W days (default %(default)s)")
    parser.add_argument("--warm-context-days", type=int, default=DEFAULT_CONTEXT, metavar="C",
                        help="the warm build also reads the C days before the window, as history "
                             "only (default %(default)s)")
    parser.add_argument("--warm-variant", metavar="TAG",
                        help="name of the warm chain trained with --warm-set's overrides (its "
                             "models are cached under it)")
    parser.add_argument("--warm-set", action="append", default=None,
                        help="config override of the warm chain (repeatable; default: "
                             f"{' '.join(DEFAULT_WARM_SET)}; none: --warm-set '')")
    parser.add_argument("--test-on", choices=("own", "full"), default=DEFAULT_TEST_ON,
                        help="own: each model's test rows from its own build (the history "
                             "features see only the build's days); full: every model's export "
                             "scores the full build's test rows (default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=500, metavar="N",
                        help="resamples of the paired bootstrap intervals (0: none)")
    parser.add_argument("--oov-buckets", type=int, nargs="*", default=None,
                        help="measure these bucket counts instead of the daily table")
    args = parser.parse_args(argv)
    if args.warm_window < 1 or args.warm_context_days < 0 or args.days < 2 or args.bootstrap < 0:
        parser.error("--warm-window must be >= 1, --warm-context-days >= 0, --days >= 2, "
                     "--bootstrap >= 0")
    if args.warm_set is None:
        args.warm_set, args.warm_variant = list(DEFAULT_WARM_SET), (
            args.warm_variant or DEFAULT_VARIANT)
    args.warm_set = [override for override in args.warm_set if override]
    if args.warm_set and not args.warm_variant:
        parser.error("--warm-set needs --warm-variant TAG (its models are cached under it)")
    os.makedirs(args.workdir, exist_ok=True)
    if args.oov_buckets:
        result = {"oov": oov(args)}
        path = os.path.join(args.workdir, "oov.json")
    else:
        table = daily(args)
        result = {"daily": table, **bar(table),
                  "mean": {k: float(np.mean([r[k] for r in table])) for k in table[0]
                           if k.endswith(("_auc", "_seconds", "_time", "_examples"))}}
        path = os.path.join(args.workdir,
                            f"continuous_{table[0]['chain']}_{args.test_on}.json")
        print(markdown(table))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "daily"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
