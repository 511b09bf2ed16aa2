"""Query-item vectors: the query -> items table, the item space and x_q as CSR rows.

x_q[i] = r_p if item i was clicked after query q, r_n if shown after q and never clicked, r_0
otherwise (docs/PAPER.md "Diffusion augmentation"); `DenseRows` makes dense [batch, N] tensors
of them inside a tf.function.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from qrec_tf import data
from qrec_tf import schema as S
from qrec_tf.augment.config import AugmentDataConfig


@dataclasses.dataclass
class QueryItemTable:
    """The Beam job's query_items/ table as flat arrays; queries sorted by key.

    keys: [Q] query keys. clicked_rows / clicked_items / click_counts: [C] one entry per
    (query, clicked item). unclicked_rows / unclicked_items: [U] per (query, shown-never-clicked
    item). Rows index `keys`.
    """

    keys: list[str]
    clicked_rows: np.ndarray
    clicked_items: np.ndarray
    click_counts: np.ndarray
    unclicked_rows: np.ndarray
    unclicked_items: np.ndarray


def read_query_items(data_dir: str, batch_size: int = 4096) -> QueryItemTable:
    """`<data_dir>/query_items/` (read by `data.query_item_batches`) as a QueryItemTable."""
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (
        "clicked_rows", "clicked_items", "click_counts", "unclicked_rows", "unclicked_items")}
    for rows in data.query_item_batches(data_dir, batch_size):
        offset = len(keys)
        keys.extend(key.decode() for key in rows[S.QI_QUERY_KEY].numpy())
        for prefix, name in (("clicked", S.QI_CLICKED_ITEM_IDS),
                             ("unclicked", S.QI_UNCLICKED_ITEM_IDS)):
            sparse = rows[name]
            parts[f"{prefix}_rows"].append(sparse.indices[:, 0].numpy() + offset)
            parts[f"{prefix}_items"].append(sparse.values.numpy())
        counts = rows[S.QI_CLICK_COUNTS]
        parts["click_counts"].append(counts.values.numpy())
    flat = {name: np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
            for name, arrays in parts.items()}
    if len(flat["click_counts"]) != len(flat["clicked_items"]):
        raise ValueError(f"{os.path.join(data_dir, S.QUERY_ITEMS_DIR)}: click counts and clicked "
                         "items differ in length")
    # Sort queries by key, so row order (and with it every random draw) is independent of sharding.
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    new_row = np.empty(len(keys), np.int64)
    new_row[order] = np.arange(len(keys))
    return QueryItemTable(
        keys=[keys[i] for i in order],
        clicked_rows=new_row[flat["clicked_rows"]], clicked_items=flat["clicked_items"],
        click_counts=flat["click_counts"],
        unclicked_rows=new_row[flat["unclicked_rows"]], unclicked_items=flat["unclicked_items"])


@dataclasses.dataclass
class ItemSpace:
    """The N items of the query-item vectors; column j of x_q is item_ids[j]."""

    item_ids: np.ndarray                # int64 [N], most exposed first
    report: dict

    def columns(self, items: np.ndarray) -> np.ndarray:
        """Column of each item id, -1 for items outside the space."""
        if not len(self.item_ids):
            return np.full(len(items), -1)
        order = np.argsort(self.item_ids)
        position = np.searchsorted(self.item_ids[order], items)
        position = np.minimum(position, len(order) - 1)
        found = self.item_ids[order][position] == items
        return np.where(found, order[position], -1)


def choose_item_space(table: QueryItemTable, vocabulary: np.ndarray, max_items: int) -> ItemSpace:
    """The `max_items` search items shown after the most distinct queries, among `vocabulary`
    (the CTR model's item ids); ties: more clicks, then smaller id."""
    shown = np.concatenate([table.clicked_items, table.unclicked_items])
    items, exposure = np.unique(shown, return_counts=True)
    clicks = np.zeros(len(items), np.int64)
    np.add.at(clicks, np.searchsorted(items, table.clicked_items), table.click_counts)
    known = np.isin(items, vocabulary)
    candidates = np.flatnonzero(known)
    ranked = candidates[np.lexsort((items[candidates], -clicks[candidates],
                                    -exposure[candidates]))]
    chosen = ranked[:max_items]
    space = ItemSpace(items[chosen], {})
    inside = np.zeros(len(items), bool)
    inside[chosen] = True
    clicked_inside = space.columns(table.clicked_items) >= 0
    unclicked_inside = space.columns(table.unclicked_items) >= 0
    space.report = {
        "search_items": int(len(items)),
        "items_in_space": int(len(chosen)),
        "items_outside_item_vocabulary": int((~known).sum()),
        "items_outside_cap": int((known & ~inside).sum()),
        "clicked_pairs_outside": int((~clicked_inside).sum()),
        "clicks_outside": int(table.click_counts[~clicked_inside].sum()),
        "unclicked_pairs_outside": int((~unclicked_inside).sum()),
        "share_of_clicks_inside": round(
            float(table.click_counts[clicked_inside].sum() / max(1, table.click_counts.sum())),
            4),
    }
    return space


@dataclasses.dataclass
class QueryItemMatrix:
    """x_q for every query as CSR rows over the item space (entries sorted by column).

    row_splits int64 [Q + 1]; columns int32 [Z]; positive bool [Z] (clicked, else shown and never
    clicked); click_counts int32 [Z] (0 for negatives). Absent entries are r_0.
    """

    row_splits: np.ndarray
    columns: np.ndarray
    positive: np.ndarray
    click_counts: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_splits) - 1

    def row_of_entries(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows), np.diff(self.row_splits))

    def positives_per_row(self) -> np.ndarray:
        return np.bincount(self.row_of_entries()[self.positive], minlength=self.rows)

    def entries_per_row(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def without(self, drop: np.ndarray) -> "QueryItemMatrix":
        """The matrix without the entries where `drop` (bool [Z]) is set."""
        keep = ~drop
        rows = self.row_of_entries()[keep]
        splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.rows))])
        return QueryItemMatrix(splits.astype(np.int64), self.columns[keep], self.positive[keep],
                               self.click_counts[keep])


def build_matrix(table: QueryItemTable, space: ItemSpace) -> QueryItemMatrix:
    rows = np.concatenate([table.clicked_rows, table.unclicked_rows])
    columns = space.columns(np.concatenate([table.clicked_items, table.unclicked_items]))
    positive = np.arange(len(rows)) < len(table.clicked_rows)
    counts = np.concatenate([table.click_counts, np.zeros(len(table.unclicked_rows), np.int64)])
    inside = columns >= 0
    rows, columns = rows[inside], columns[inside]
    positive, counts = positive[inside], counts[inside]
    order = np.lexsort((columns, rows))
    splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(table.keys)))])
    return QueryItemMatrix(splits.astype(np.int64), columns[order].astype(np.int32),
                           positive[order], counts[order].astype(np.int32))


def hold_out(matrix: QueryItemMatrix, fraction: float, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Picks `fraction` of the rows with positives and, in each, half of its positives (at least
    one). Returns (held-out rows sorted, bool [Z] held-out entries)."""
    with_positives = np.flatnonzero(matrix.positives_per_row() > 0)
    count = int(round(fraction * len(with_positives)))
    rows = np.sort(rng.choice(with_positives, count, replace=False)) if count else \
        np.zeros(0, np.int64)
    held = np.zeros(len(matrix.columns), bool)
    for row in rows:
        entries = np.arange(matrix.row_splits[row], matrix.row_splits[row + 1])
        entries = entries[matrix.positive[entries]]
        held[rng.choice(entries, max(1, len(entries) // 2), replace=False)] = True
    return rows, held


class DenseRows:
    """Turns CSR rows into dense [batch, N] x_q tensors inside a tf.function."""

    def __init__(self, matrix: QueryItemMatrix, items: int, values: AugmentDataConfig):
        self.items = items
        self.row_splits = tf.constant(matrix.row_splits)
        self.columns = tf.constant(matrix.columns)
        self.positive = tf.constant(matrix.positive)
        self.r_p, self.r_n, self.r_0 = (values.positive_value, values.negative_value,
                                        values.neutral_value)

    def entries(self, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row in batch, column, positive) of every entry of `rows`."""
        # The entries' positions as ranges of the rows' splits: nothing as long as all entries
        # (tens of millions at N = 2M) is formed per batch.
        picked = tf.ragged.range(tf.gather(self.row_splits, rows),
                                 tf.gather(self.row_splits, rows + 1))
        index = picked.flat_values
        return (tf.cast(picked.value_rowids(), tf.int32), tf.gather(self.columns, index),
                tf.gather(self.positive, index))

    def scatter(self, batch_row: tf.Tensor, column: tf.Tensor, value: tf.Tensor, batch: tf.Tensor,
                ) -> tf.Tensor:
        """[batch, N] with r_0 everywhere but the given entries."""
        indices = tf.stack([batch_row, column], axis=1)
        return self.r_0 + tf.scatter_nd(indices, value - self.r_0,
                                        tf.stack([batch, tf.constant(self.items)]))

    def values(self, positive: tf.Tensor) -> tf.Tensor:
        return tf.where(positive, self.r_p, self.r_n)
