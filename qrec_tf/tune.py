"""Chooses loss weights and key hyper-parameters on the validation split, with Optuna.

    python -m qrec_tf.tune --config configs/queryrec.yaml --data DIR --trials N \\
        [--output tune_out/queryrec] [--set train.epochs=4 ...] [--seed 0] \\
        [--space model.nip_weight=0:1 --space train.learning_rate=log:3e-4:3e-3 ...]

Each trial trains the config with sampled values (Optuna's TPE sampler, seeded) and scores it by
its best validation AUC; trials that fall behind the median of earlier ones after an epoch are
pruned. The test split is never read. Writes into --output:
- `trials.csv`: every trial, its parameters, validation AUC, epochs and state;
- `best.yaml`: the config with the best trial's values (train with it, evaluate on test once);
- `study.json`: the search space, the best trial and the counts of finished and pruned trials.

The default space: `model.nip_weight` in [0.05, 1] and `model.query_encoder_ctr_gradient` true
or false (models with the query encoder; NIP alone trains the encoder when it is false),
`model.contrastive_weight` in [0, 0.5] (models with the contrastive loss), `model.embedding_l2`
log-uniform in [1e-3, 10] or 0, and `train.learning_rate` log-uniform in [3e-4, 3e-3].
`--space KEY=LOW:HIGH`, `KEY=log:LOW:HIGH` or `KEY=choice:A,B,C` replaces or adds a dimension.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys

import keras
import yaml

from qrec_tf.config import Config, load_config
from qrec_tf.models import registry  # noqa: F401 (registers the model names with config)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched config key: a float range (optionally log-uniform) or a list of choices."""

    key: str                        # "section.field", e.g. model.nip_weight
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        return f"{'log-uniform' if self.log else 'uniform'} in [{self.low}, {self.high}]"


def default_space(config: Config) -> list[Dimension]:
    """The dimensions that mean something for this model (see the module docstring)."""
    din = config.model.section_named("din")
    space = []
    if din and din.query_encoder:
        # Whether the click loss trains the SAS encoder decides between the regimes of
        # docs/RESULTS.md (issue 20); when it does not, NIP is all that trains it, so its weight
        # is searched from 0.05, never 0.
        space += [Dimension("model.nip_weight", 0.05, 1.0),
                  Dimension("model.query_encoder_ctr_gradient", choices=(False, True))]
    if din and din.contrastive_weight:
        space.append(Dimension("model.contrastive_weight", 0.0, 0.5))
    space += [Dimension("model.embedding_l2", choices=(0.0, 0.001, 0.01, 0.1, 1.0, 10.0)),
              Dimension("train.learning_rate", 3e-4, 3e-3, log=True)]
    return space


def parse_dimension(text: str) -> Dimension:
    """`KEY=LOW:HIGH`, `KEY=log:LOW:HIGH` or `KEY=choice:A,B,...` (choices parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ValueError(f"--space expects section.key=LOW:HIGH, log:LOW:HIGH or choice:A,B; "
                         f"got {text!r}")
    key, spec = text.split("=", 1)
    if spec.startswith("choice:"):
        choices = tuple(yaml.safe_load(value) for value in spec[len("choice:"):].split(","))
        return Dimension(key, choices=choices)
    log = spec.startswith("log:")
    parts = spec[len("log:"):].split(":") if log else spec.split(":")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"--space {text!r}: the range must be two numbers LOW:HIGH") from None
    if not low < high or (log and low <= 0):
        raise ValueError(f"--space {text!r}: needs LOW < HIGH (and LOW > 0 for log)")
    return Dimension(key, low, high, log)


def trial_overrides(params: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


class _ReportValidationAUC(keras.callbacks.Callback):
    """Reports each epoch's validation AUC to the trial and stops a run Optuna prunes."""

    def __init__(self, trial):
        super().__init__()
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_auc")
        if value is None:
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


def tune(config_path: str, data_dir, output_dir: str, trials: int,
         overrides: list[str] = (), space: list[Dimension] | None = None, seed: int = 0,
         verbose: int = 0) -> dict:
    """Runs the study; returns what study.json holds. `data_dir`: a path or a loaded
    `qrec_tf.data_dir.DataDirectory`, loaded once for every trial."""
    import optuna

    from qrec_tf import train as trainer
    from qrec_tf.data_dir import DataDirectory

    data_dir = DataDirectory.of(data_dir)

    dimensions = {d.key: d for d in default_space(load_config(config_path, overrides))}
    dimensions.update({d.key: d for d in space or []})
    # An unknown key or a value the config refuses fails here, before any training.
    load_config(config_path, [*overrides, *trial_overrides(
        {key: _probe(d) for key, d in dimensions.items()})])
    os.makedirs(output_dir, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    rows = []

    def objective(trial):
        params = {key: dimension.suggest(trial) for key, dimension in dimensions.items()}
        config = load_config(config_path, [*overrides, *trial_overrides(params)])
        model_dir = os.path.join(output_dir, "trials", f"{trial.number:03d}")
        reporter = _ReportValidationAUC(trial)
        run = trainer.train(config, data_dir, model_dir, verbose=verbose,
                            extra_callbacks=[reporter])
        value = run["best_val_auc"]
        rows.append({"trial": trial.number, **params, "val_auc": value,
                     "epochs": run["epochs_run"], "state": "pruned" if reporter.pruned
                     else "complete"})
        _write_trials(os.path.join(output_dir, "trials.csv"), rows)
        print(f"trial {trial.number}: val AUC {value:.4f} {params}"
              f"{' (pruned)' if reporter.pruned else ''}", flush=True)
        if reporter.pruned:
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no trial finished (all were pruned or failed)")
    best = study.best_trial
    best_config = load_config(config_path, [*overrides, *trial_overrides(best.params)])
    with open(os.path.join(output_dir, "best.yaml"), "w") as f:
        f.write(f"# qrec_tf.tune: best of {len(study.trials)} trials, validation AUC "
                f"{best.value:.4f} (trial {best.number})\n")
        f.write(best_config.to_yaml())
    result = {"config": config_path, "data_dir": os.path.abspath(data_dir.path), "seed": seed,
              "space": {key: d.describe() for key, d in dimensions.items()},
              "trials": len(study.trials), "complete": len(complete),
              "pruned": len(study.trials) - len(complete),
              "best": {"trial": best.number, "val_auc": best.value, "params": best.params}}
    with open(os.path.join(output_dir, "study.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def _probe(dimension: Dimension):
    return dimension.choices[0] if dimension.choices is not None else dimension.low


def _write_trials(path: str, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.tune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/queryrec.yaml")
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--output", help="directory for trials.csv, best.yaml, study.json "
                                         "(default tune_out/<model name>)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="fixed config overrides for every trial (e.g. train.epochs=4)")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a searched dimension: KEY=LOW:HIGH, KEY=log:LOW:HIGH or "
                             "KEY=choice:A,B (replaces the default for KEY)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    try:
        space = [parse_dimension(text) for text in args.space]
        config = load_config(args.config, args.set)
        output = args.output or os.path.join("tune_out", config.model.name)
        from qrec_tf.data_dir import DataDirectory

        data = DataDirectory.of(args.data)
        data.schema   # a clear error early when --data is not the Beam job's output
        result = tune(args.config, data, output, args.trials, args.set, space, args.seed)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    best = result["best"]
    print(f"best of {result['trials']} trials ({result['pruned']} pruned): validation AUC "
          f"{best['val_auc']:.4f} with {best['params']}; written to {output}/best.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
