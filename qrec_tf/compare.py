"""Is model A's AUC different from model B's on the same rows? Paired bootstrap and DeLong's test.

    python -m qrec_tf.compare --model-dirs A B --data DIR [--split test] [--resamples 2000]
        [--seed 0] [--confidence 0.95] [--output compare.json]
    python -m qrec_tf.compare --predictions A.csv B.csv
    python -m qrec_tf.compare --saved-models SERVING_VERSION CANDIDATE --data NEW_DAY \
        --split valid [--promote-to EXPORT_BASE] [--max-drop 0.0]

Scores the split with both trained models (or reads two `qrec_tf.evaluate --predictions` files),
checks that the rows are the same examples, and prints AUC(A) - AUC(B) with its paired bootstrap
interval (qrec_tf.metrics.paired_bootstrap_auc_difference) and DeLong's z and two-sided p
(qrec_tf.metrics.delong_test). A single test AUC on one seed says little: on a leave-one-out test
split of a few thousand users its standard error is near 0.01.

`--saved-models` scores the split with two exported versions (SavedModel directories; the
`serving_default` signature, raw ids in): the served model and a candidate trained on newer
data can be compared on the new day's rows although their vocabularies differ (ids the served
model never saw go to its OOV rows, as they would in serving). With `--promote-to BASE` the
candidate is copied into BASE as its next version, for a server watching BASE to pick up, when
AUC(candidate) >= AUC(served) - --max-drop; otherwise nothing is copied and the exit status is 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from qrec_tf import metrics
from qrec_tf import schema as S


def compare_predictions(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                        resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> dict:
    """The comparison of two predictions dicts (qrec_tf.evaluate.predict) of the same rows."""
    for key in ("user_id", "item_id", "label"):
        if a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
            raise ValueError(f"the two predictions are not of the same rows ({key} differs): "
                             "score the same split of the same data directory")
    labels = a["label"]
    return {"rows": int(labels.size), "positives": int(labels.sum()),
            "auc_a": metrics.auc(labels, a["probability"]),
            "auc_b": metrics.auc(labels, b["probability"]),
            "bootstrap": metrics.paired_bootstrap_auc_difference(
                labels, a["probability"], b["probability"], resamples, seed, confidence),
            "delong": metrics.delong_test(labels, a["probability"], b["probability"])}


def compare_models(model_dir_a: str, model_dir_b: str, data_dir, split: str = "test",
                   resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Both trained models scored on one split of `data_dir` (a path or a loaded
    `qrec_tf.data_dir.DataDirectory`: loaded once for both) and compared."""
    from qrec_tf import evaluate
    from qrec_tf.data_dir import DataDirectory

    data_dir = DataDirectory.of(data_dir)
    predictions = [evaluate.predict(evaluate.load_trained_model(model_dir, data_dir)[1],
                                    data_dir, split) for model_dir in (model_dir_a, model_dir_b)]
    result = compare_predictions(*predictions, resamples=resamples, seed=seed,
                                 confidence=confidence)
    return {"a": model_dir_a, "b": model_dir_b, "split": split, **result}


def predict_saved_model(path: str, data_dir, split: str, batch_size: int = 4096
                        ) -> dict[str, np.ndarray]:
    """As qrec_tf.evaluate.predict, with an exported version's serving_default signature
    (`data_dir`: a path or a loaded `qrec_tf.data_dir.DataDirectory`)."""
    import tensorflow as tf

    from qrec_tf import data
    from qrec_tf.data_dir import DataDirectory

    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path} is not an exported version (no saved_model.pb)")
    function = tf.saved_model.load(path).signatures["serving_default"]
    names = list(function.structured_input_signature[1])
    columns: dict[str, list] = {"user_id": [], "item_id": [], "label": [], "probability": []}
    for batch in data.make_dataset(DataDirectory.of(data_dir), split, batch_size,
                                   shuffle=False):
        columns["probability"].append(function(**{n: batch[n] for n in names})["ctr"].numpy())
        for key in ("user_id", "item_id", "label"):
            columns[key].append(batch[key].numpy())
    return {name: np.concatenate(values) for name, values in columns.items()}


def promote(candidate: str, base_path: str) -> str:
    """Copies the exported version `candidate` into `base_path` as its next version (written
    beside it and renamed into place: a polling server never sees half of it); returns it."""
    from qrec_tf import export

    os.makedirs(base_path, exist_ok=True)
    target = os.path.join(base_path, str(export.next_version(base_path)))
    staging = os.path.join(base_path, f".promote-{os.getpid()}")
    shutil.copytree(candidate, staging)
    os.rename(staging, target)
    return target


def summary(result: dict) -> str:
    boot, delong = result["bootstrap"], result["delong"]
    return (f"AUC A {result['auc_a']:.4f}, B {result['auc_b']:.4f} on {result['rows']} rows; "
            f"A - B = {boot['difference']:+.4f}, {boot['confidence']:.0%} paired bootstrap "
            f"interval [{boot['low']:+.4f}, {boot['high']:+.4f}] ({boot['resamples']} "
            f"resamples); DeLong z = {delong['z']:+.2f}, p = {delong['p_value']:.3g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.compare",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dirs", nargs=2, metavar=("A", "B"),
                        help="two --model-dir of finished training runs")
    source.add_argument("--predictions", nargs=2, metavar=("A", "B"),
                        help="two CSV files of python -m qrec_tf.evaluate --predictions")
    source.add_argument("--saved-models", nargs=2, metavar=("SERVED", "CANDIDATE"),
                        help="two exported versions (e.g. export/queryrec/1 and a new export)")
    parser.add_argument("--promote-to", metavar="EXPORT_BASE",
                        help="with --saved-models: copy CANDIDATE into this base path as its "
                             "next version when it is not worse than SERVED (exit 3 if it is)")
    parser.add_argument("--max-drop", type=float, default=0.0,
                        help="with --promote-to: the AUC the candidate may lose (default 0)")
    parser.add_argument("--data", help="output directory of the Beam job (with --model-dirs)")
    parser.add_argument("--split", default="test", choices=S.SPLITS)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--output", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if (args.model_dirs or args.saved_models) and not args.data:
        parser.error("--model-dirs and --saved-models need --data")
    if args.promote_to and not args.saved_models:
        parser.error("--promote-to needs --saved-models")
    if args.resamples < 1 or not 0.0 < args.confidence < 1.0:
        parser.error("--resamples must be >= 1 and --confidence in (0, 1)")
    try:
        if args.model_dirs:
            result = compare_models(*args.model_dirs, args.data, args.split, args.resamples,
                                    args.seed, args.confidence)
        elif args.saved_models:
            from qrec_tf.data_dir import DataDirectory

            loaded = DataDirectory.of(args.data)   # read once for both exports
            result = {"a": args.saved_models[0], "b": args.saved_models[1],
                      "split": args.split, **compare_predictions(
                          *(predict_saved_model(path, loaded, args.split)
                            for path in args.saved_models),
                          resamples=args.resamples, seed=args.seed, confidence=args.confidence)}
        else:
            from qrec_tf import evaluate

            result = {"a": args.predictions[0], "b": args.predictions[1], **compare_predictions(
                *(evaluate.read_predictions(path) for path in args.predictions),
                resamples=args.resamples, seed=args.seed, confidence=args.confidence)}
    except (FileNotFoundError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    if args.promote_to:
        result["promoted"] = bool(result["auc_b"] >= result["auc_a"] - args.max_drop)
        if result["promoted"]:
            result["promoted_to"] = promote(args.saved_models[1], args.promote_to)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    print(summary(result))
    if args.promote_to:
        if not result["promoted"]:
            print(f"not promoted: AUC {result['auc_b']:.4f} of {args.saved_models[1]} is below "
                  f"{result['auc_a']:.4f} - {args.max_drop} of {args.saved_models[0]}")
            return 3
        print(f"promoted: {args.saved_models[1]} -> {result['promoted_to']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
