"""Scores a split with a trained model and writes exact AUC, GAUC and logloss.

    python -m qrec_tf.evaluate --model-dir DIR --data DIR --split test --output metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf

from qrec_tf import data as D
from qrec_tf import metrics
from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.models.registry import build_model

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.weights.h5"


def load_trained_model(model_dir: str, data_dir: str):
    """Rebuilds the model from <model_dir>/config.yaml and loads its trained weights."""
    config_path = os.path.join(model_dir, CONFIG_FILE)
    weights = os.path.join(model_dir, WEIGHTS_FILE)
    for path in (config_path, weights):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {model_dir!r} the --model-dir of a "
                                    "finished `python -m qrec_tf.train` run?")
    config = load_config(config_path)
    model = build_model(config.model, data_dir)
    model.load_weights(weights)
    return config, model


def predict(model, data_dir: str, split: str, batch_size: int = 4096):
    """-> (user ids, labels, probabilities) over a whole split."""
    score = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    users, labels, probabilities = [], [], []
    for batch in D.make_dataset(data_dir, split, batch_size, shuffle=False):
        probabilities.append(score(batch).numpy())
        users.append(batch[S.USER_ID].numpy())
        labels.append(batch[S.LABEL].numpy())
    return np.concatenate(users), np.concatenate(labels), np.concatenate(probabilities)


def evaluate(model_dir: str, data_dir: str, split: str, batch_size: int = 4096) -> dict:
    config, model = load_trained_model(model_dir, data_dir)
    users, labels, probabilities = predict(model, data_dir, split, batch_size)
    result = metrics.all_metrics(users, labels, probabilities)
    result.update(model=config.model.name, split=split)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--split", default="test", choices=S.SPLITS)
    parser.add_argument("--output", help="metrics JSON file (default: <model-dir>/metrics_<split>.json)")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.model_dir, args.data, args.split, args.batch_size)
    except (FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    output = args.output or os.path.join(args.model_dir, f"metrics_{args.split}.json")
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
