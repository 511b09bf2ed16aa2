"""Scores a split with a trained model and writes exact AUC, GAUC and logloss.

    python -m qrec_tf.evaluate --model-dir DIR --data DIR --split test --output metrics.json \
        [--predictions predictions.csv]

`--predictions` also writes the score of every example (CSV: row, user_id, item_id, label,
probability; rows in the split's file order), which `python -m qrec_tf.compare` pairs across
models.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import weakref

import numpy as np
import tensorflow as tf

from qrec_tf import data, metrics
from qrec_tf import schema as S
from qrec_tf.data_dir import DataDirectory

# Rebuilds a trained model on a data directory: the CLIs' (and export's) name for it.
from qrec_tf.models.registry import load_trained_model  # noqa: F401 (this module's API)

PREDICTION_COLUMNS = ("row", "user_id", "item_id", "label", "probability")


# One traced scoring function per model, so that predicting several splits with one model (the
# ablation scores valid and test) traces once, not once per call (TF warns about the retracing).
_SCORING_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scoring_function(model):
    if model not in _SCORING_FUNCTIONS:
        # A weak reference inside: a strong one in the value would keep the key alive forever.
        held = weakref.ref(model)
        _SCORING_FUNCTIONS[model] = tf.function(lambda batch: held()(batch, training=False),
                                                reduce_retracing=True)
    return _SCORING_FUNCTIONS[model]


def predict(model, data_dir: DataDirectory | str, split: str, batch_size: int = 4096
            ) -> dict[str, np.ndarray]:
    """{"user_id", "item_id", "label", "probability"}: one value per example of a whole split,
    in the split's file order (the same order for every model)."""
    score = _scoring_function(model)
    columns: dict[str, list] = {"user_id": [], "item_id": [], "label": [], "probability": []}
    for batch in data.make_dataset(DataDirectory.of(data_dir), split, batch_size, shuffle=False):
        columns["probability"].append(score(batch).numpy())
        columns["user_id"].append(batch[S.USER_ID].numpy())
        columns["item_id"].append(batch[S.ITEM_ID].numpy())
        columns["label"].append(batch[S.LABEL].numpy())
    return {name: np.concatenate(values) for name, values in columns.items()}


def item_popularity(data_dir: DataDirectory | str, item_ids: np.ndarray) -> np.ndarray:
    """float64 [rows]: how often each item occurs in the training data (the Beam job's
    vocab/items.txt counts; 0 for an item outside it): the popularity baseline's score."""
    counts = {int(value): count
              for value, count in DataDirectory.of(data_dir).vocab(S.VOCAB_ITEMS)}
    return np.array([counts.get(int(item), 0) for item in np.ravel(item_ids)], np.float64)


def write_predictions(path: str, predictions: dict[str, np.ndarray]) -> None:
    """The per-example scores as CSV (PREDICTION_COLUMNS; probabilities to 9 digits)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for row, (user, item, label, probability) in enumerate(zip(
                predictions["user_id"], predictions["item_id"], predictions["label"],
                predictions["probability"])):
            writer.writerow([row, int(user), int(item), int(label), f"{probability:.9g}"])


def read_predictions(path: str) -> dict[str, np.ndarray]:
    """What write_predictions wrote; a clear error for a file that is not such a CSV."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as error:
        raise ValueError(f"cannot read predictions {path}: {error.strerror}") from None
    if not rows or tuple(rows[0]) != PREDICTION_COLUMNS:
        raise ValueError(f"{path} is not a predictions file of qrec_tf.evaluate (header "
                         f"{','.join(PREDICTION_COLUMNS)})")
    try:
        values = np.asarray(rows[1:], dtype=np.float64).reshape(-1, len(PREDICTION_COLUMNS))
    except ValueError:
        raise ValueError(f"{path}: every row needs {len(PREDICTION_COLUMNS)} numbers") from None
    return {"user_id": values[:, 1].astype(np.int64), "item_id": values[:, 2].astype(np.int64),
            "label": values[:, 3].astype(np.int64), "probability": values[:, 4]}


def evaluate(model_dir: str, data_dir: DataDirectory | str, split: str, batch_size: int = 4096,
             predictions_path: str | None = None) -> dict:
    """The metrics of a trained model on a split; with `predictions_path` also writes its
    per-example scores there (write_predictions)."""
    data_dir = DataDirectory.of(data_dir)
    config, model = load_trained_model(model_dir, data_dir)
    try:
        predictions = predict(model, data_dir, split, batch_size)
    except tf.errors.DataLossError as error:
        raise data.corrupt_data_error(data_dir.path, [split], error) from None
    if predictions_path:
        write_predictions(predictions_path, predictions)
    result = metrics.all_metrics(predictions["user_id"], predictions["label"],
                                 predictions["probability"])
    result.update(model=config.model.name, split=split)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--split", default="test", choices=S.SPLITS)
    parser.add_argument("--output",
                        help="metrics JSON file (default: <model-dir>/metrics_<split>.json)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--predictions", metavar="FILE",
                        help="also write every example's score to this CSV (row, user_id, "
                             "item_id, label, probability), for python -m qrec_tf.compare")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.model_dir, f"metrics_{args.split}.json")
    for path, flag in ((args.output, "--output"), (args.predictions, "--predictions")):
        # Checked before scoring: a path that cannot be written would lose the metrics.
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            parser.error(f"{flag} {path}: directory {folder} does not exist")
        if path and os.path.isdir(path):
            parser.error(f"{flag} {path} is a directory; give a file name")
    try:
        result = evaluate(args.model_dir, args.data, args.split, args.batch_size,
                          args.predictions)
    except (FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
