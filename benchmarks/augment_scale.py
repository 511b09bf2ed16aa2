"""The augment stage at catalogue scale: the capped dense diffusion against latent diffusion
(`model.latent: true`) at N = 20k items, then latent diffusion alone at N = 200k and 2M.

    python -m benchmarks.augment_scale [--work DIR] [--sizes 20000 200000 2000000]
        [--compare-epochs 10] [--scale-epochs 1] [--cases dense latent latent2]

Data. The search log of `pipelines.synthetic` (its World and search sessions: 8 x 4 topics,
Zipf item popularity within a sub-topic, 20% off-topic results, ~40% click-less sessions),
drawn in memory and aggregated to the Beam job's query -> items table, which is written as
the data directory the stage reads (query_items/, vocab/items.txt, item_categories.tsv with
the items' first-level categories). The CSV files and the Beam job are skipped: at 2M items
the log has tens of millions of search rows, more than the in-memory Beam runner handles on
this machine in reasonable time. Sessions are drawn in chunks of users until the log shows
enough distinct items: at the first size 97% of a catalogue of exactly N (so the dense cap
data.max_items = N drops nothing), at the others N of a catalogue 10% larger. The item space
is every shown item (its size is reported exactly).

Cases. Each runs `qrec_tf.augment.run` (the whole stage: read, train, quality check,
generation for every click-less query, table) in its own process, so that its peak resident
memory (getrusage ru_maxrss, in the summary) is its own:
  dense   the default config (hidden [256], data.max_items = 20,000), only at the first size;
  latent  model.latent=true (16 units per group, groups = the 8 first-level categories);
  latent2 the same with model.latent_category_level=2 (the 32 second-level categories).
The latent cases run at every size.
Both use the same seed, item space and held-out queries at the first size (its log shows at
most 20,000 items, so the dense cap drops nothing), so their Recall@10 / NDCG@10 compare
directly. Time per epoch is measured by a callback (the first epoch includes tracing).
Checkpoints are off (train.checkpoint_seconds very large): at 2M items one is ~1.2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines.synthetic.regimes import SPAN_DAYS, Regime
from pipelines.synthetic.world import World, search_log
from qrec_tf import augment
from qrec_tf import schema as S

# Queries per sub-topic pool, by item count: larger logs have more distinct queries.
QUERIES_PER_SUBTOPIC = {20_000: 150, 200_000: 1000, 2_000_000: 3000}
SESSIONS_PER_USER = 8
CHUNK_USERS = 20_000
NO_CHECKPOINTS = "train.checkpoint_seconds=1000000000.0"
# Each case's overrides (module docstring, "Cases").
CASES = {"dense": [], "latent": ["model.latent=true"],
         "latent2": ["model.latent=true", "model.latent_category_level=2"]}


def search_table(size: int, items: int, catalogue: int, seed: int) -> tuple[dict, World]:
    """The query -> items table of an in-memory synthetic search log over a catalogue of
    `catalogue` items, drawn in chunks of users until it shows >= `items` distinct items; `size`
    (the nominal N) sets the query pools and the chunk size.

    Returns ({"query": int [Z], "item": int [Z] (world item index), "clicks": int [Z]},
    world); one entry per (query, shown item), sorted by query.
    """
    rng = np.random.default_rng(seed)
    queries = QUERIES_PER_SUBTOPIC.get(size, max(40, size // 130))
    chunk_users = min(50_000, max(2_000, size // 10))
    # Every chunk's users are new users with the tastes of world users 0 .. chunk_users - 1
    # (tastes repeat; the query -> item structure, which the stage learns, is the world's).
    world = World(rng, chunk_users, catalogue, Regime(queries_per_subtopic=queries))
    span = SPAN_DAYS * 86_400_000
    pairs, clicks = np.zeros(0, np.int64), np.zeros(0, np.int64)
    shown = np.zeros(catalogue, bool)
    for chunk in range(1000):
        sessions = np.maximum(1, rng.poisson(SESSIONS_PER_USER, chunk_users))
        log = search_log(world, rng, sessions, span)
        pair = log["sess_query"][log["row_sess"]].astype(np.int64) * catalogue + log["row_item"]
        pairs = np.concatenate([pairs, pair])
        clicks = np.concatenate([clicks, log["row_click"]])
        pairs, inverse = np.unique(pairs, return_inverse=True)
        clicks = np.bincount(inverse.ravel(), weights=clicks, minlength=len(pairs)).astype(
            np.int64)
        shown[log["row_item"]] = True
        del log, pair, inverse
        print(f"  chunk {chunk + 1}: {int(shown.sum()):,} of {catalogue:,} items shown, "
              f"{len(pairs):,} query-item pairs", flush=True)
        if shown.sum() >= items:
            break
    return {"query": pairs // catalogue, "item": pairs % catalogue, "clicks": clicks}, world


def write_data(data_dir: str, size: int, items: int, catalogue: int, seed: int) -> dict:
    """The data directory of `search_table` (as the Beam job writes its parts); returns facts
    about it."""
    started = time.perf_counter()
    table, world = search_table(size, items, catalogue, seed)
    os.makedirs(os.path.join(data_dir, S.QUERY_ITEMS_DIR), exist_ok=True)
    os.makedirs(os.path.join(data_dir, S.VOCAB_DIR), exist_ok=True)
    query, item, clicks = table["query"], table["item"], table["clicks"]
    splits = np.concatenate([[0], np.cumsum(np.bincount(query, minlength=len(world.queries)))])
    path = os.path.join(data_dir, S.QUERY_ITEMS_DIR, "query_items-00000-of-00001.tfrecord.gz")
    ids = world.item_ids
    written = clickless = 0
    with tf.io.TFRecordWriter(path, options=S.COMPRESSION) as writer:
        for q, words in enumerate(world.queries):
            entries = slice(splits[q], splits[q + 1])
            if splits[q] == splits[q + 1]:
                continue
            its, cs = ids[item[entries]], clicks[entries]
            clicked = {int(i): int(c) for i, c in zip(its[cs > 0], cs[cs > 0])}
            clickless += not clicked
            writer.write(S.query_items_example("_".join(map(str, words)), words, clicked,
                                               its[cs == 0].tolist(), sessions=1))
            written += 1
    with open(S.vocab_path(data_dir, S.VOCAB_ITEMS), "w") as f:
        f.writelines(f"{i}\t1\n" for i in ids)
    with open(os.path.join(data_dir, S.ITEM_CATEGORIES_FILE), "w") as f:
        f.writelines(f"{i}\t{c}\t{s}\t-1\n" for i, c, s in zip(
            ids, world.first_ids[world.item_first], world.second_ids[world.item_sub]))
    facts = {"queries": written, "clickless_queries": clickless,
             "query_item_pairs": int(len(query)), "shown_items": int(len(np.unique(item))),
             "catalogue": int(len(ids)), "seconds": round(time.perf_counter() - started, 1)}
    with open(os.path.join(data_dir, "benchmark_data.json"), "w") as f:
        json.dump(facts, f)
    return facts


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 2))


def run_case(data_dir: str, output_dir: str, overrides: list[str]) -> None:
    """One stage run (in this process); adds the epoch times to its summary."""
    times = EpochTimes()
    config = augment.load_augment_config(None, overrides)
    summary = augment.run(config, data_dir, output_dir, verbose=2, extra_callbacks=[times])
    summary["epoch_seconds"] = times.seconds
    with open(os.path.join(output_dir, augment.SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)


def case(data_dir: str, output_dir: str, overrides: list[str]) -> dict:
    """run_case in a child process (its own peak memory); returns its summary."""
    command = [sys.executable, "-m", "benchmarks.augment_scale", "--case", data_dir, output_dir,
               *[arg for o in overrides for arg in ("--set", o)]]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    with open(os.path.join(output_dir, augment.SUMMARY_FILE)) as f:
        return json.load(f)


def row(name: str, summary: dict) -> str:
    quality, training = summary["quality"], summary["training"]
    epochs = summary["epoch_seconds"]
    later = epochs[1:] or epochs
    memory = summary["memory"]
    return (f"| {name} | {summary['item_space']['items_in_space']:,} | "
            f"{training['epochs_run']} x {training['steps_per_epoch']} | "
            f"{epochs[0]:.0f} | {np.median(later):.0f} | "
            f"{quality['diffusion']['recall']:.4f} | {quality['diffusion']['ndcg']:.4f} | "
            f"{quality['popularity']['recall']:.4f} | "
            f"{summary['generation_seconds']:.0f} | {summary['total_seconds']:.0f} | "
            f"{memory['estimate']['parameters'] / 1e6:.1f}M | {memory['peak_rss_mb']:,.0f} |")


HEADER = ("| case | N items | epochs x steps | 1st epoch s | epoch s (median of the rest) | "
          "Recall@10 | NDCG@10 | popularity Recall@10 | generation s | total s | parameters | "
          "peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/augment_scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--compare-epochs", type=int, default=10,
                        help="epochs of both cases at the first size")
    parser.add_argument("--scale-epochs", type=int, default=1,
                        help="epochs of the latent case at the other sizes")
    parser.add_argument("--cases", nargs="+", default=["dense", "latent"], choices=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra config override")
    parser.add_argument("--case", nargs=2, metavar=("DATA", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        run_case(*args.case, args.set)
        return 0
    rows = []
    for index, items in enumerate(args.sizes):
        data_dir = os.path.join(args.work, f"data_{items}")
        if not os.path.exists(os.path.join(data_dir, "benchmark_data.json")):
            print(f"generating the search log for N = {items:,} ...", flush=True)
            # The compared size: a catalogue of exactly N items, 97% of them shown, so the dense
            # cap (data.max_items = N) drops nothing and both cases see the same item space.
            # The others: >= N items shown of a catalogue 10% larger.
            write_data(data_dir, items, int(0.97 * items) if index == 0 else items,
                       items if index == 0 else int(1.1 * items), args.seed)
        with open(os.path.join(data_dir, "benchmark_data.json")) as f:
            print(f"N = {items:,}: {json.load(f)}", flush=True)
        epochs = args.compare_epochs if index == 0 else args.scale_epochs
        common = [f"train.epochs={epochs}", NO_CHECKPOINTS, *args.set]
        for name in args.cases if index == 0 else [c for c in args.cases if c != "dense"]:
            summary = case(data_dir, os.path.join(args.work, f"{name}_{items}"),
                           [*common, *CASES[name]])
            rows.append(row(name, summary))
            print("\n".join([HEADER, *rows]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
