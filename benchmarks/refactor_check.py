"""Whether a refactor kept every model the same, bit for bit: builds each model at seed 0 on a
data directory (`registry.build_model`, its committed config), trains two steps on fixed random
batches and saves the initial weights by variable path, the weights after the steps, the step
logs and the scores of 16 rows; `--compare` sets two such outputs side by side (one per
checkout: run `save` from each).

    PYTHONPATH=$PWD python -m benchmarks.refactor_check save --data D --output OUT_NEW
    python -m benchmarks.refactor_check compare OUT_OLD OUT_NEW
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ALL = ["din", "din_query", "din_nip", "din_con", "din_con_diffusion", "queryrec", "dcn", "ple",
       "sesrec", "iv4rec"]


def save(data_dir: str, output: str, names: list[str], positives_dir: str | None) -> None:
    import keras

    from qrec_tf import schema as S
    from qrec_tf.config import load_config
    from qrec_tf.models import registry
    from qrec_tf.optimizers import make_optimizer
    from qrec_tf.testing import random_batch

    os.makedirs(output, exist_ok=True)
    schema = S.Schema.load(data_dir)
    for name in names:
        extra = [f"model.positives_dir={positives_dir}"] if (
            positives_dir and name == "din_con_diffusion") else []
        config = load_config(f"configs/{name}.yaml", extra)
        keras.utils.set_random_seed(0)
        model = registry.build_model(config.model, data_dir)
        initial = {v.path: v.numpy() for v in model.weights}
        model.compile(optimizer=make_optimizer("lazy_adam", 1e-3))
        logs = []
        for step in range(2):
            features, labels = random_batch(schema, model.vocabularies, 64,
                                            np.random.default_rng(step))
            logs.append({k: float(v) for k, v in
                         model.train_on_batch(features, labels, return_dict=True).items()})
        features, _ = random_batch(schema, model.vocabularies, 16, np.random.default_rng(9))
        np.savez(os.path.join(output, f"{name}.npz"),
                 **{"init:" + k: v for k, v in initial.items()},
                 **{"after:" + v.path: v.numpy() for v in model.weights},
                 scores=model(features, training=False).numpy())
        with open(os.path.join(output, f"{name}.json"), "w") as f:
            json.dump(logs, f)
        print(name, logs[-1], flush=True)


def compare(old: str, new: str) -> bool:
    same = True
    for file in sorted(f for f in os.listdir(old) if f.endswith(".npz")):
        name = file[:-4]
        if not os.path.exists(os.path.join(new, file)):
            print(f"{name}: missing in {new}")
            same = False
            continue
        a, b = np.load(os.path.join(old, file)), np.load(os.path.join(new, file))
        differ = [k for k in sorted(set(a.files) & set(b.files))
                  if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
        only = sorted(set(a.files) ^ set(b.files))
        logs_equal = (json.load(open(os.path.join(old, name + ".json")))
                      == json.load(open(os.path.join(new, name + ".json"))))
        ok = not differ and not only and logs_equal
        same &= ok
        print(f"{name}: {'same' if ok else 'DIFFERENT'}"
              + (f"; arrays differ: {differ[:4]}" if differ else "")
              + (f"; in one only: {only[:4]}" if only else "")
              + ("" if logs_equal else "; the step logs differ"))
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("save")
    run.add_argument("--data", required=True)
    run.add_argument("--output", required=True)
    run.add_argument("--models", nargs="+", default=ALL)
    run.add_argument("--positives-dir", help="din_con_diffusion's table (model.din.positives_dir)")
    both = sub.add_parser("compare")
    both.add_argument("old")
    both.add_argument("new")
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.data, args.output, args.models, args.positives_dir)
        return 0
    return 0 if compare(args.old, args.new) else 1


if __name__ == "__main__":
    sys.exit(main())
