"""DeepCTR's DIN on the numpy arrays that `benchmarks.peers` exported from our TFRecords.

Runs in the side venv (deepctr, tf-keras, TF_USE_LEGACY_KERAS=1), never in the project's:

    TF_USE_LEGACY_KERAS=1 bench_out/peers_venv/bin/python -m benchmarks.peers_deepctr \
        --arrays DIR --mode time|fit --output result.json [...]

`--arrays` holds train/valid/test.npz ({DeepCTR feature name: int32 [examples, ...], "label"})
and meta.json (vocabulary rows per feature, the model's sizes), written by
`benchmarks.peers.export_arrays`. Indices are those of our lookups (0 padding, 1 OOV), so
DeepCTR's masking of index 0 in the sequences masks exactly our padding.

mode time: `--warmup` + `--steps` training steps, one epoch over a shuffled slice; writes the
step times. mode fit: up to `--epochs` epochs with early stopping on validation AUC (the best
epoch's weights kept), then the test split's click probabilities (the parent computes the AUC
with the same function as for ours).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from benchmarks.step_timer import step_timer


def load(arrays: str, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(os.path.join(arrays, f"{split}.npz")) as npz:
        columns = {name: npz[name] for name in npz.files}
    return columns, columns.pop("label").astype(np.float32)


def build_din(meta: dict, seed: int):
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat
    from deepctr.models import DIN

    d, sizes = meta["embedding_dim"], meta["vocab_sizes"]
    columns = [SparseFeat(name, sizes[name], embedding_dim=d) for name in meta["sparse_features"]]
    # DIN pools the sequence named "hist_" + a target feature's name, sharing its table.
    columns += [VarLenSparseFeat(SparseFeat("hist_" + name, sizes[name], embedding_dim=d,
                                            embedding_name=name), maxlen=meta["history_length"])
                for name in meta["history_features"]]
    return DIN(columns, meta["history_features"], dnn_hidden_units=meta["mlp_units"],
               dnn_activation="dice", att_hidden_size=meta["attention_units"],
               att_activation="dice", seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrays", required=True)
    parser.add_argument("--mode", choices=("time", "fit"), required=True)
    parser.add_argument("--output", required=True, help="result JSON")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        parser.error("DeepCTR needs tf-keras: run with TF_USE_LEGACY_KERAS=1")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    with open(os.path.join(args.arrays, "meta.json")) as f:
        meta = json.load(f)
    model = build_din(meta, args.seed)
    auc = tf.keras.metrics.AUC(num_thresholds=2000, name="auc")
    model.compile(tf.keras.optimizers.Adam(args.learning_rate), "binary_crossentropy",
                  metrics=[auc])
    x, y = load(args.arrays, "train")
    timer = step_timer(tf.keras.callbacks.Callback)
    b = args.batch_size
    result: dict = {"framework": f"deepctr {meta.get('deepctr_version', '')}".strip()}
    if args.mode == "time":
        # One epoch of exactly warmup + steps full batches, drawn at random from the train split.
        rows = np.resize(np.random.default_rng(args.seed).permutation(len(y)),
                         (args.warmup + args.steps) * b)
        model.fit({k: v[rows] for k, v in x.items()}, y[rows], batch_size=b, epochs=1,
                  shuffle=False, verbose=0, callbacks=[timer])
    else:
        xv, yv = load(args.arrays, "valid")
        with tempfile.TemporaryDirectory() as tmp:
            best = os.path.join(tmp, "best.weights.h5")
            history = model.fit(
                x, y, batch_size=b, epochs=args.epochs, shuffle=True, verbose=0,
                validation_data=(xv, yv), callbacks=[
                    timer,
                    tf.keras.callbacks.ModelCheckpoint(best, monitor="val_auc", mode="max",
                                                       save_best_only=True,
                                                       save_weights_only=True),
                    tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                     patience=args.patience)])
            model.load_weights(best)
        xt, _ = load(args.arrays, "test")
        result["val_auc"] = [float(v) for v in history.history["val_auc"]]
        result["test_probabilities"] = model.predict(xt, batch_size=4096, verbose=0)[:, 0].tolist()
    result["step_seconds"] = timer.times
    with open(args.output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
