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

from qrec_tf import layout, positives
from qrec_tf import schema as S
from qrec_tf.augment.config import AugmentConfig, AugmentOutputConfig
from qrec_tf.augment.generation import (
    ItemScores,
    dense_item_scores,
    generation_batch_size,
    positives_table,
    rank_items,
)
from qrec_tf.augment.grouping import read_item_groups
from qrec_tf.augment.latent import (
    build_latent_trainer,
    latent_generation_batch_size,
    latent_item_scores,
    latent_memory_estimate_mb,
)
from qrec_tf.augment.quality import quality_check
from qrec_tf.augment.training import (
    DiffusionTrainer,
    SparseBackup,
    build_trainer,
    memory_estimate_mb,
)
from qrec_tf.augment.vectors import (
    DenseRows,
    ItemSpace,
    QueryItemTable,
    build_matrix,
    choose_item_space,
    hold_out,
    read_query_items,
)
from qrec_tf.data_dir import DataDirectory

LOG = logging.getLogger("qrec_tf.augment")
# What the stage writes into --output (besides positives/): the summary, the resolved config,
# the trained weights and, while training runs, the checkpoints.
# (qrec_tf.layout names them: a new Beam build of the same directory removes them.)
SUMMARY_FILE = layout.AUGMENT_SUMMARY_FILE
CONFIG_FILE = layout.AUGMENT_CONFIG_FILE
WEIGHTS_FILE = layout.AUGMENT_WEIGHTS_FILE
CHECKPOINT_DIR = layout.AUGMENT_CHECKPOINT_DIR


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def queries_to_fill(clicks_per_query: np.ndarray, output: AugmentOutputConfig) -> np.ndarray:
    """Rows of the queries the stage fills with generated items: the click-less ones and, with
    output.augment_clicked, those with fewer than output.top_k clicked items.

    clicks_per_query: int [Q] distinct clicked items per query -> int64 [F] rows, ascending.
    """
    fill = clicks_per_query == 0
    if output.augment_clicked:
        fill |= clicks_per_query < output.top_k
    return np.flatnonzero(fill)


def _positives_summary(table_sizes: np.ndarray) -> dict:
    return {"mean": round(float(table_sizes.mean()), 3) if len(table_sizes) else 0,
            "empty": int((table_sizes == 0).sum())}


def _write_config(config: AugmentConfig, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def _write_summary(summary: dict, output_dir: str) -> dict:
    with open(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _summary_head(data_dir: str, output_dir: str, table: QueryItemTable,
                  has_clicks: np.ndarray, trained: bool) -> dict:
    """The summary's fields that the trained and the no-work paths share."""
    return {"data_dir": os.path.abspath(data_dir),
            "positives_dir": os.path.abspath(os.path.join(output_dir, positives.POSITIVES_DIR)),
            "trained": trained,
            "queries": {"total": len(table.keys), "with_clicks": int(has_clicks.sum()),
                        "clickless": int((~has_clicks).sum())}}


def _log_positives_only(config: AugmentConfig, table: QueryItemTable, has_clicks: np.ndarray,
                        data_dir: str, output_dir: str, started: float) -> dict:
    """The no-work path: no query needs filling, so the table is the log's clicks (most clicked
    first, as positives.log_positives orders them) and nothing is trained or checked."""
    _write_config(config, output_dir)
    filled = positives_table(table, ItemSpace(np.zeros(0, np.int64), {}), {},
                             config.output.top_k)
    positives.write(filled, output_dir)
    head = _summary_head(data_dir, output_dir, table, has_clicks, trained=False)
    return _write_summary({
        **head,
        "queries": {
            **head["queries"],
            "to_fill": 0, "clickless_filled": 0, "clicked_augmented": 0,
            "positives_per_query": _positives_summary(np.array([len(v) for v in
                                                                filled.values()])),
        },
        "item_space": None, "latent_groups": None, "quality": None, "training": None,
        "generation_seconds": 0.0,
        "total_seconds": round(time.perf_counter() - started, 2),
        "memory": {"estimate": None, "peak_rss_mb": _peak_rss_mb()},
        "config": config.to_dict(),
    }, output_dir)


class _Model:
    """The trained model of either path, as the stage uses it: item scores over the rows of a
    DenseRows, the queries per generation batch, the memory estimate and what the summary says
    of its item groups (latent path only)."""

    def __init__(self, config: AugmentConfig, data_dir: DataDirectory, space: ItemSpace,
                 train_dense: DenseRows, train_rows: np.ndarray):
        self.config, items = config, len(space.item_ids)
        if config.model.latent:
            self.groups = read_item_groups(data_dir, space.item_ids,
                                           config.model.latent_hash_groups,
                                           config.model.latent_item_embeddings,
                                           config.train.seed,
                                           config.model.latent_category_level)
            LOG.info("latent diffusion: %d items in %d groups (%d by category) of %d units",
                     items, len(self.groups.names), self.groups.report()["category_groups"],
                     config.model.latent_dim)
            self.trainer: DiffusionTrainer = build_latent_trainer(config, self.groups,
                                                                  train_dense, train_rows)
            self.batch_size = latent_generation_batch_size(config, items)
        else:
            self.groups = None
            self.trainer = build_trainer(config, items, train_dense, train_rows)
            self.batch_size = generation_batch_size(config.output, config.model.steps, items)

    def item_scores(self, dense: DenseRows) -> ItemScores:
        if self.groups is not None:
            return latent_item_scores(self.trainer.diffusion, dense, self.groups.row_of_column)
        return dense_item_scores(self.trainer.diffusion, dense)

    def memory_estimate(self, items: int, entries: int, queries: int) -> dict:
        if self.groups is not None:
            return latent_memory_estimate_mb(self.config, items, len(self.groups.names),
                                             entries, queries)
        return memory_estimate_mb(self.config, items, entries, queries)


def run(config: AugmentConfig, data_dir: DataDirectory | str, output_dir: str, verbose="auto",
        extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Runs the stage; returns what augment_summary.json holds. `data_dir`: the Beam job's
    output (only query_items/, vocab/items.txt and, for latent groups, item_categories.tsv are
    read), a path or loaded (`qrec_tf.data_dir.DataDirectory`)."""
    started = time.perf_counter()
    loaded = DataDirectory.of(data_dir)
    data_dir = loaded.path
    table = read_query_items(data_dir)
    vocabulary = np.array([int(value) for value, _ in loaded.vocab(S.VOCAB_ITEMS)], np.int64)
    clicks_per_query = np.bincount(table.clicked_rows, minlength=len(table.keys))
    has_clicks = clicks_per_query > 0
    to_generate = queries_to_fill(clicks_per_query, config.output)
    LOG.info("%d of %d queries to fill: %d click-less, %d with fewer than %d clicks "
             "(output.augment_clicked %s)", len(to_generate), len(table.keys),
             int((~has_clicks).sum()), int(has_clicks[to_generate].sum()), config.output.top_k,
             "on" if config.output.augment_clicked else "off")
    if not len(to_generate) and not config.train.force:
        LOG.info("no query needs filling: writing the log's positives without training "
                 "(--force or train.force=true trains and runs the quality check anyway)")
        return _log_positives_only(config, table, has_clicks, data_dir, output_dir, started)
    # The latent model has no item cap: its size follows the latent width (latent.py).
    space = choose_item_space(table, vocabulary,
                              len(vocabulary) if config.model.latent else config.data.max_items)
    if not len(space.item_ids):
        raise ValueError(f"no item of {data_dir}/{S.QUERY_ITEMS_DIR}/ is in the item vocabulary: "
                         "nothing to train on")
    items = len(space.item_ids)
    full = build_matrix(table, space)
    clicked = full.positives_per_row() > 0
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

    _write_config(config, output_dir)
    train_dense = DenseRows(train_matrix, items, config.data)
    model = _Model(config, loaded, space, train_dense, train_rows)
    trainer = model.trainer
    trained = time.perf_counter()
    history = trainer.fit(
        tf.data.Dataset.range(trainer.steps_per_epoch), epochs=config.train.epochs,
        callbacks=[SparseBackup(os.path.join(output_dir, CHECKPOINT_DIR),
                                 config.train.checkpoint_seconds), *extra_callbacks],
        shuffle=False, verbose=verbose)
    train_seconds = time.perf_counter() - trained
    trainer.save_weights(os.path.join(output_dir, WEIGHTS_FILE))

    quality = quality_check(model.item_scores(train_dense), model.batch_size, train_dense,
                            train_matrix, full, held_rows, held, config)
    LOG.info("quality check on %d held-out queries: diffusion %s, popularity %s",
             quality["queries"], quality["diffusion"], quality["popularity"])
    if quality.get("below_popularity"):
        # The positives are still written (the stage's output is what it trained), but a user
        # must know they are worse than a constant ranking before a CTR model reads them.
        LOG.warning("the diffusion model ranks the held-out clicks worse than global popularity "
                    "(Recall@%d %.4f < %.4f): its generated positives are weak; train longer or "
                    "give it more capacity (model.hidden_units; with model.latent, finer groups: "
                    "model.latent_category_level=2, or model.latent_dim) before a CTR model "
                    "reads them", quality["k"], quality["diffusion"]["recall"],
                    quality["popularity"]["recall"])

    generating = time.perf_counter()
    progress = keras.utils.Progbar(len(to_generate), unit_name="query",
                                   verbose=0 if verbose == 0 else 1)
    full_dense = DenseRows(full, items, config.data)
    ranked = rank_items(model.item_scores(full_dense), full_dense, to_generate,
                        config.output.top_k, True, model.batch_size, config.train.seed,
                        progress if len(to_generate) else None)
    generate_seconds = time.perf_counter() - generating
    generated = dict(zip(to_generate.tolist(), ranked))
    filled = positives_table(table, space, generated, config.output.top_k)
    positives.write(filled, output_dir)

    sizes = np.array([len(v) for v in filled.values()])
    empty_input = full.entries_per_row() == 0
    head = _summary_head(data_dir, output_dir, table, has_clicks, trained=True)
    summary = {
        **head,
        "queries": {
            **head["queries"],
            "to_fill": int(len(to_generate)),
            "clickless_filled": int(sum(1 for r in to_generate if not has_clicks[r]
                                        and (generated[r] >= 0).any())),
            "clickless_without_items_in_space": int((~has_clicks & empty_input).sum()),
            "clicked_augmented": int(sum(1 for r in to_generate if has_clicks[r])),
            "with_clicks_only_outside_space": int((has_clicks & ~clicked).sum()),
            "trained_on": int(len(train_rows)),
            "held_out": int(len(held_rows)),
            "positives_per_query": _positives_summary(sizes),
        },
        "item_space": space.report,
        "latent_groups": model.groups.report() if model.groups is not None else None,
        "quality": quality,
        "training": {"epochs_run": len(history.history.get("loss", [])),
                     "steps_per_epoch": trainer.steps_per_epoch,
                     "loss": [float(v) for v in history.history.get("loss", [])],
                     "seconds": round(train_seconds, 2)},
        "generation_seconds": round(generate_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "memory": {"estimate": model.memory_estimate(items, len(full.columns), len(table.keys)),
                   "peak_rss_mb": _peak_rss_mb()},
        "config": config.to_dict(),
    }
    return _write_summary(summary, output_dir)
