"""The augment stage end to end: read the table, train, check, generate, write positives/."""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
import yaml

from qrec_tf import positives
from qrec_tf import schema as S
from qrec_tf.augment.config import AugmentConfig
from qrec_tf.augment.generation import positives_table, rank_items
from qrec_tf.augment.quality import quality_check
from qrec_tf.augment.training import (
    DiffusionTrainer,
    SparseBackup,
    build_diffusion,
    memory_estimate_mb,
)
from qrec_tf.augment.vectors import (
    DenseRows,
    build_matrix,
    choose_item_space,
    hold_out,
    read_query_items,
)

LOG = logging.getLogger("qrec_tf.augment")
# What the stage writes into --output (besides positives/): the summary, the resolved config,
# the trained weights and, while training runs, the checkpoints.
SUMMARY_FILE = "augment_summary.json"
CONFIG_FILE = "augment_config.yaml"
WEIGHTS_FILE = "diffusion.weights.h5"
CHECKPOINT_DIR = "checkpoints"


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def run(config: AugmentConfig, data_dir: str, output_dir: str, verbose="auto",
        extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Runs the stage; returns what augment_summary.json holds."""
    started = time.perf_counter()
    table = read_query_items(data_dir)
    vocabulary = np.array([int(value) for value, _ in S.read_vocab(data_dir, S.VOCAB_ITEMS)],
                          np.int64)
    space = choose_item_space(table, vocabulary, config.data.max_items)
    if not len(space.item_ids):
        raise ValueError(f"no item of {data_dir}/{S.QUERY_ITEMS_DIR}/ is in the item vocabulary: "
                         "nothing to train on")
    items = len(space.item_ids)
    full = build_matrix(table, space)
    clicked = full.positives_per_row() > 0
    has_clicks = np.bincount(table.clicked_rows, minlength=len(table.keys)) > 0
    rng = np.random.default_rng(config.train.seed)
    held_rows, held = hold_out(full, config.output.holdout_fraction, rng)
    train_matrix = full.without(held)
    wanted = train_matrix.entries_per_row() > 0
    # Held-out queries stay out of training, like the click-less queries the model fills:
    # trained on, their hidden clicks would be taught as "not a positive" for that very input.
    wanted[held_rows] = False
    if not config.data.train_on_clickless:
        wanted &= train_matrix.positives_per_row() > 0
    train_rows = np.flatnonzero(wanted)
    if not len(train_rows):
        raise ValueError("no query has a clicked item inside the item space: nothing to train on "
                         "(raise data.max_items, or set data.train_on_clickless=true)")
    LOG.info("%d queries (%d with clicks), item space %d of %d search items; training on %d "
             "queries, %d held out for the quality check", len(table.keys), int(has_clicks.sum()),
             items, space.report["search_items"], len(train_rows), len(held_rows))

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    keras.utils.set_random_seed(config.train.seed)
    diffusion = build_diffusion(config.model, items, config.train.seed)
    train_dense = DenseRows(train_matrix, items, config.data)
    trainer = DiffusionTrainer(diffusion, train_dense, train_rows, config.train.batch_size,
                               config.train.positive_mask_rate, config.train.seed)
    trainer.build((None, items))
    trainer.compile(optimizer=keras.optimizers.Adam(
        config.train.learning_rate, weight_decay=config.train.weight_decay or None),
        jit_compile=False)
    trained = time.perf_counter()
    history = trainer.fit(
        tf.data.Dataset.range(trainer.steps_per_epoch), epochs=config.train.epochs,
        callbacks=[SparseBackup(os.path.join(output_dir, CHECKPOINT_DIR),
                                 config.train.checkpoint_seconds), *extra_callbacks],
        shuffle=False, verbose=verbose)
    train_seconds = time.perf_counter() - trained
    trainer.save_weights(os.path.join(output_dir, WEIGHTS_FILE))

    quality = quality_check(diffusion, train_dense, train_matrix, full, held_rows, held, config)
    LOG.info("quality check on %d held-out queries: diffusion %s, popularity %s",
             quality["queries"], quality["diffusion"], quality["popularity"])

    to_generate = np.flatnonzero(~has_clicks | (config.output.augment_clicked & has_clicks
                                                & (np.bincount(table.clicked_rows,
                                                               minlength=len(table.keys))
                                                   < config.output.top_k)))
    generating = time.perf_counter()
    progress = keras.utils.Progbar(len(to_generate), unit_name="query",
                                   verbose=0 if verbose == 0 else 1)
    ranked = rank_items(diffusion, DenseRows(full, items, config.data), to_generate,
                        config.output.top_k, True, config.output.batch_size, config.train.seed,
                        progress if len(to_generate) else None)
    generate_seconds = time.perf_counter() - generating
    generated = dict(zip(to_generate.tolist(), ranked))
    filled = positives_table(table, space, generated, config.output.top_k)
    positives.write(filled, output_dir)

    sizes = np.array([len(v) for v in filled.values()])
    empty_input = full.entries_per_row() == 0
    summary = {
        "data_dir": os.path.abspath(data_dir),
        "positives_dir": os.path.abspath(os.path.join(output_dir, positives.POSITIVES_DIR)),
        "queries": {
            "total": len(table.keys),
            "with_clicks": int(has_clicks.sum()),
            "clickless": int((~has_clicks).sum()),
            "clickless_filled": int(sum(1 for r in to_generate if not has_clicks[r]
                                        and (generated[r] >= 0).any())),
            "clickless_without_items_in_space": int((~has_clicks & empty_input).sum()),
            "clicked_augmented": int(sum(1 for r in to_generate if has_clicks[r])),
            "with_clicks_only_outside_space": int((has_clicks & ~clicked).sum()),
            "trained_on": int(len(train_rows)),
            "held_out": int(len(held_rows)),
            "positives_per_query": {"mean": round(float(sizes.mean()), 3) if len(sizes) else 0,
                                    "empty": int((sizes == 0).sum())},
        },
        "item_space": space.report,
        "quality": quality,
        "training": {"epochs_run": len(history.history.get("loss", [])),
                     "steps_per_epoch": trainer.steps_per_epoch,
                     "loss": [float(v) for v in history.history.get("loss", [])],
                     "seconds": round(train_seconds, 2)},
        "generation_seconds": round(generate_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "memory": {"estimate": memory_estimate_mb(config, items, len(full.columns),
                                                  len(table.keys)),
                   "peak_rss_mb": _peak_rss_mb()},
        "config": config.to_dict(),
    }
    with open(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
