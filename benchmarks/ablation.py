"""The paper's table 5 ablation on generated data: every model, several seeds, test AUC.

    python -m benchmarks.ablation [--regime default|sparse_feed|no_signal] [--users 4000]
        [--queries-per-subtopic 300] [--seeds 0 1 2]
        [--epochs 3] [--models din din_query din_nip din_con din_con_diffusion queryrec dcn]
        [--augment-set train.epochs=20 ...] [--workdir bench_out/ablation] [--reuse]

Generates one KuaiSAR-format log (pipelines.synthetic, of the chosen --regime), runs the Beam job
once, trains each model with each seed on the same data, evaluates on the test split, and writes
the table (mean and std of test AUC, relative AUC change over din, and the paired bootstrap
interval of each model's mean-over-seeds AUC minus din's on the same test rows) to
docs/RESULTS.md between the ablation markers of the regime.
When a model reads diffusion positives (positives: diffusion, or auto as queryrec does), the
augment stage (qrec_tf.augment, configs/augment/default.yaml) runs once first, into
<workdir>/augment, and those models get model.positives_dir pointing there.
Shape the paper reports (KuaiSAR-small): din_query ~ din; din_nip and din_con above din; queryrec
highest. Any registered model runs (--models ... ple sesrec iv4rec); the Beam job always writes the
search examples too (ple trains on them), so one data directory serves every model.
benchmarks/table4.py reuses this machinery (add_arguments, run_models, write_results); with
--reuse and the same --workdir, the data, the augment stage and every finished (model, seed) run
are kept, so the two tables can share their common models. --reuse on a work directory whose log
was made with other arguments stops with the differences and deletes nothing.
The generator's query pool (--queries-per-subtopic) is larger than its default so that, as on
KuaiSAR, many queries are rare and a quarter of them never got a click.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time

import numpy as np

from benchmarks import query_diagnostics
from pipelines import build_tfrecords, synthetic
from qrec_tf import augment, evaluate, metrics, train
from qrec_tf.config import Config, load_config
from qrec_tf.models.registry import MODELS

PAPER_AUC = {"din": 0.6793, "din_query": 0.6792, "din_nip": 0.6894, "din_con": 0.6819,
             "din_con_diffusion": 0.6890, "queryrec": 0.6972, "dcn": 0.6729,
             "ple": 0.6825, "sesrec": 0.6843, "iv4rec": 0.6640}
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                       "RESULTS.md")
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
# The log of each regime's benchmark where it differs from the regime's own defaults: the default
# regime's query pool is larger than the generator's default, so that, as on KuaiSAR, many queries
# are rare and a quarter of them never got a click.
BENCHMARK_LOG = {"default": dict(queries_per_subtopic=300)}


def markers(regime: str) -> tuple[str, str]:
    """The RESULTS.md markers of a regime's ablation table (the default regime's are BEGIN, END)."""
    if regime == "default":
        return BEGIN, END
    return f"<!-- ablation:{regime}:begin -->", f"<!-- ablation:{regime}:end -->"


def difference_to_din(results: dict[str, list[dict]], name: str) -> dict | None:
    """The paired bootstrap interval of mean-over-seeds test AUC, `name` minus din, on the same
    test rows (qrec_tf.metrics.paired_bootstrap_auc_difference); None without din."""
    if name == "din" or "din" not in results:
        return None
    runs = {model: [evaluate.read_predictions(r["predictions"]) for r in results[model]]
            for model in (name, "din")}
    labels = runs["din"][0]["label"]
    for run in runs[name] + runs["din"]:
        if not np.array_equal(run["label"], labels) or not np.array_equal(
                run["user_id"], runs["din"][0]["user_id"]):
            raise ValueError("test predictions of different rows: rerun without --reuse")
    return metrics.paired_bootstrap_auc_difference(
        labels, np.stack([r["probability"] for r in runs[name]]),
        np.stack([r["probability"] for r in runs["din"]]), resamples=1000, seed=0)


def ceilings(results: dict[str, list[dict]], args) -> dict[str, list[dict]]:
    """{model: [query_diagnostics.ceiling_of_predictions per seed]}: what the after-search flag
    (the user searched the target's sub-category in the 48 h before it) adds to each run's test
    AUC when fitted on validation next to the run's score."""
    history = query_diagnostics.search_history(os.path.join(args.workdir, "log"))
    data_dir = os.path.join(args.workdir, "data")
    flags = {split: query_diagnostics.split_flags(history, data_dir, split)
             for split in ("valid", "test")}
    return {name: [query_diagnostics.ceiling_of_predictions(flags, {
                "valid": evaluate.read_predictions(run["valid_predictions"]),
                "test": evaluate.read_predictions(run["predictions"])}) for run in runs]
            for name, runs in results.items()}


def ceiling_share(flag_gains: list[float], din_gains: list[float]) -> float | None:
    """What the flag adds over a model divided by what it adds over din, seed by seed, averaged
    (None where the flag adds nothing over din: no signal to take)."""
    shares = [gain / din for gain, din in zip(flag_gains, din_gains) if din > 0]
    return float(np.mean(shares)) if shares else None


def per_seed_differences(results: dict[str, list[dict]], name: str) -> list[float]:
    """Test AUC of `name` minus din's, seed by seed (the same seed's din)."""
    return [run["auc"] - din["auc"] for run, din in zip(results[name], results["din"])]


def table(results: dict[str, list[dict]], args,
          flag: dict[str, list[dict]] | None = None) -> str:
    begin, end = markers(args.regime)
    base = np.mean([r["auc"] for r in results["din"]]) if "din" in results else None
    title = "Ablation" + ("" if args.regime == "default" else f", regime {args.regime}")
    lines = [begin, "", f"## {title} (`benchmarks/ablation.py --regime {args.regime}`)", "",
             f"{describe_run(args)}. Interval: 95% paired bootstrap (1000 resamples of the test "
             "rows) of the model's mean-over-seeds test AUC minus din's; per seed: the model "
             "minus din of the same training seed. Flag: what the after-search flag (the user "
             "searched the target's sub-category in the 48 h before it), fitted on validation "
             "next to the model's score, adds to its test AUC (per seed); ceiling share: that "
             "over what it adds to din, averaged over the seeds.", "",
             "| model | test AUC mean | std | vs din | AUC - din [95% CI] | per seed - din | "
             "flag adds (per seed) | ceiling share | paper AUC (KuaiSAR-small) |",
             "|---|---|---|---|---|---|---|---|---|"]
    din_gains = ([c["difference"]["difference"] for c in flag["din"]]
                 if flag and "din" in flag else [])
    for name, runs in results.items():
        aucs = [r["auc"] for r in runs]
        rel = f"{(np.mean(aucs) / base - 1) * 100:+.2f}%" if base else "n/a"
        ci = difference_to_din(results, name)
        interval = (f"{ci['difference']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"
                    if ci else "-")
        seeds = (", ".join(f"{d:+.4f}" for d in per_seed_differences(results, name))
                 if ci else "-")
        gains = [c["difference"]["difference"] for c in flag[name]] if flag else []
        share = ceiling_share(gains, din_gains) if gains and din_gains else None
        lines.append(f"| {name} | {np.mean(aucs):.4f} | {np.std(aucs):.4f} | {rel} | "
                     f"{interval} | {seeds} | "
                     f"{', '.join(f'{g:+.4f}' for g in gains) or '-'} | "
                     f"{'-' if share is None else f'{share:.2f}'} | "
                     f"{PAPER_AUC.get(name, float('nan')):.4f} |")
    return "\n".join(lines + ["", end])


def describe_run(args: argparse.Namespace) -> str:
    """One line on the data and training of a run, for the tables."""
    log = _log_arguments(args)
    return (f"Generated log (regime {args.regime}): {args.users} users, {args.items} items, "
            f"{log['rec_per_user']} feed impressions and {log['sessions_per_user']} search "
            f"sessions per user, {log['queries_per_subtopic']} queries per sub-topic, seed "
            f"{args.data_seed}; at most "
            f"{args.epochs} epochs (early stopping on validation AUC), seeds {args.seeds}; "
            "test split (one held-out impression per user)")


def write_results(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Puts `text` (which starts with `begin` and ends with `end`) into docs/RESULTS.md in place
    of the section between those markers, or at the end when there is none."""
    old = open(RESULTS).read() if os.path.exists(RESULTS) else "# Measured results\n"
    if begin in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(RESULTS, "w") as f:
        f.write(new)


def add_arguments(parser: argparse.ArgumentParser, models: list[str], workdir: str) -> None:
    """The options of a benchmark that trains `models` (the default) on one generated log."""
    parser.add_argument("--regime", default="default", choices=sorted(synthetic.REGIMES),
                        help="the generated log's planted structure (pipelines.synthetic "
                             "--regime)")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--rec-per-user", type=int, default=None,
                        help="default: the regime's")
    parser.add_argument("--sessions-per-user", type=int, default=None,
                        help="default: the regime's")
    parser.add_argument("--queries-per-subtopic", type=int, default=None,
                        help="default: 300 in the default regime, else the regime's")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=models, choices=sorted(MODELS),
                        metavar="MODEL", help=f"any of {sorted(MODELS)} (default {models})")
    parser.add_argument("--set", action="append", default=[], help="config overrides for all")
    parser.add_argument("--augment-set", action="append", default=[],
                        help="overrides of configs/augment/default.yaml for the augment "
                             "stage")
    parser.add_argument("--workdir", default=workdir)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--reuse", action="store_true",
                        help="keep <workdir>'s data and finished runs when they were made with "
                             "the same log arguments (default: start from scratch)")


def _log_arguments(args: argparse.Namespace) -> dict:
    """synthetic.generate's arguments for the benchmark's log (regime values filled in)."""
    regime = synthetic.REGIMES[args.regime]
    defaults = {**{key: getattr(regime, key) for key in
                   ("rec_per_user", "sessions_per_user", "queries_per_subtopic")},
                **BENCHMARK_LOG.get(args.regime, {})}
    given = dict(rec_per_user=args.rec_per_user, sessions_per_user=args.sessions_per_user,
                 queries_per_subtopic=args.queries_per_subtopic)
    return dict(users=args.users, items=args.items, seed=args.data_seed, regime=args.regime,
                **{key: defaults[key] if value is None else value
                   for key, value in given.items()})


def prepare_data(args: argparse.Namespace) -> str:
    """Generates the log and runs the Beam job into <workdir>/data (with the search examples
    when one of the models trains on them); returns that directory."""
    log_dir, data_dir = os.path.join(args.workdir, "log"), os.path.join(args.workdir, "data")
    marker = os.path.join(args.workdir, "log_arguments.json")
    wanted = _log_arguments(args)
    if args.reuse and os.path.exists(marker):
        made_with = json.load(open(marker))
        if made_with != wanted:
            # --reuse promises to keep the work there: never delete it for an argument mismatch.
            changed = ", ".join(f"{key} {made_with.get(key)} (asked: {value})"
                                for key, value in wanted.items() if made_with.get(key) != value)
            raise SystemExit(f"error: --reuse: {args.workdir} holds a log made with other "
                             f"arguments: {changed}; pass those, another --workdir, or omit "
                             "--reuse to start from scratch")
        print(f"reusing the data in {data_dir}", flush=True)
        return data_dir
    shutil.rmtree(args.workdir, ignore_errors=True)
    synthetic.generate(log_dir, **wanted)
    build_tfrecords.run(["--input", log_dir, "--output", data_dir, "--search-examples"])
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return data_dir


def positives_sets(args: argparse.Namespace, data_dir: str) -> dict[str, list[str]]:
    """Runs the augment stage once when a model reads diffusion positives; returns the config
    overrides (model.positives_dir) of those models."""
    model_configs = {name: load_config(f"configs/{name}.yaml").model for name in args.models}
    dins = {name: model.section_named("din") for name, model in model_configs.items()}
    with_table = [name for name, din in dins.items()
                  if din and din.contrastive_weight and din.positives in ("diffusion", "auto")]
    if not with_table:
        return {}
    started = time.perf_counter()
    augment_dir = os.path.join(args.workdir, "augment")
    augment_config = augment.load_augment_config("configs/augment/default.yaml",
                                                 args.augment_set)
    summary_file = os.path.join(augment_dir, augment.SUMMARY_FILE)
    if args.reuse and os.path.exists(summary_file):
        summary = json.load(open(summary_file))
    else:
        summary = augment.run(augment_config, data_dir, augment_dir, verbose=0)
    quality = summary["quality"]
    checked = (f"Recall@{quality['k']} diffusion {quality['diffusion']['recall']} vs popularity "
               f"{quality['popularity']['recall']}" if quality and quality["diffusion"] else
               "no query to fill, not trained")
    print(f"augment stage for {with_table}: {checked}; "
          f"{summary['queries']['clickless_filled']} click-less queries filled "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {name: [f"model.positives_dir={augment_dir}"] for name in with_table}


def run_models(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Prepares the data, then trains every model with every seed and evaluates it on the test
    split; returns {model: [evaluate.evaluate's result per seed]}."""
    data_dir = prepare_data(args)
    table_sets = positives_sets(args, data_dir)
    results: dict[str, list[dict]] = {}
    for name in args.models:
        for seed in args.seeds:
            started = time.perf_counter()
            cfg = load_config(f"configs/{name}.yaml",
                              [f"train.seed={seed}", f"train.epochs={args.epochs}", *args.set,
                               *table_sets.get(name, [])])
            model_dir = os.path.join(args.workdir, "models", f"{name}_{seed}")
            result_file = os.path.join(model_dir, "benchmark_result.json")
            predictions = os.path.join(model_dir, "test_predictions.csv")
            valid_predictions = os.path.join(model_dir, "valid_predictions.csv")
            # A run saved before a config key existed ran with that key's default.
            if args.reuse and os.path.exists(result_file) and os.path.exists(predictions) and \
                    Config.from_dict(json.load(open(result_file))["config"]).to_dict() == \
                    cfg.to_dict():
                result = json.load(open(result_file))["result"]
            else:
                shutil.rmtree(model_dir, ignore_errors=True)
                train.train(cfg, data_dir, model_dir, verbose=0)
                result = evaluate.evaluate(model_dir, data_dir, "test",
                                           predictions_path=predictions)
                with open(result_file, "w") as f:
                    json.dump({"config": cfg.to_dict(), "result": result}, f)
            if not os.path.exists(valid_predictions):   # what the ceiling is fitted on
                evaluate.evaluate(model_dir, data_dir, "valid",
                                  predictions_path=valid_predictions)
            result["predictions"] = predictions
            result["valid_predictions"] = valid_predictions
            results.setdefault(name, []).append(result)
            print(f"{name:18s} seed {seed}: test AUC {result['auc']:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, ["din", "din_query", "din_nip", "din_con", "din_con_diffusion",
                           "queryrec", "dcn"], "bench_out/ablation")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="leave out what the after-search flag adds to each run")
    args = parser.parse_args()
    results = run_models(args)
    text = table(results, args, None if args.no_ceiling else ceilings(results, args))
    print(text)
    if not args.no_write:
        write_results(text, *markers(args.regime))
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
