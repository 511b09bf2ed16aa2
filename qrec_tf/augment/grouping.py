"""Item groups of latent diffusion (L-DiffRec): items split by their first-level category, items
without one hashed into a fixed number of groups.

Each group gets its own encoder and decoder (qrec_tf.layers.group_encoder / group_decoder),
which hold their items in *group order*: the columns of group 0, then those of group 1, ...
(within a group in column order). `ItemGroups.row_of_column` maps an item-space column to its
row in that order.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from qrec_tf import data
from qrec_tf import schema as S

LOG = logging.getLogger("qrec_tf.augment")
# Knuth's multiplicative hash (2^64 / golden ratio): spreads sequential or strided item ids
# evenly over the groups, the same in every run (unlike Python's salted hash()).
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def hash_groups(item_ids: np.ndarray, groups: int) -> np.ndarray:
    """int64 [N] group in [0, groups) of each item id (int [N], non-negative)."""
    mixed = item_ids.astype(np.uint64) * _HASH_MULTIPLIER      # wraps modulo 2^64
    return ((mixed >> np.uint64(32)) % np.uint64(groups)).astype(np.int64)


@dataclasses.dataclass
class ItemGroups:
    """The group of every item-space column.

    group_of_column: int32 [N] in [0, C); names: [C] ("category <id>" or "hash <i>"), categories
    first (ascending id), then the non-empty hash groups; every group has at least one item.
    """

    group_of_column: np.ndarray
    names: list[str]

    @property
    def sizes(self) -> list[int]:
        """[C] items per group."""
        return np.bincount(self.group_of_column, minlength=len(self.names)).tolist()

    @property
    def column_of_row(self) -> np.ndarray:
        """int32 [N]: the columns in group order (stable: column order within a group)."""
        return np.argsort(self.group_of_column, kind="stable").astype(np.int32)

    @property
    def row_of_column(self) -> np.ndarray:
        """int32 [N]: each column's row in group order (the inverse of column_of_row)."""
        rows = np.empty(len(self.group_of_column), np.int32)
        rows[self.column_of_row] = np.arange(len(self.group_of_column), dtype=np.int32)
        return rows

    def report(self) -> dict:
        sizes = np.array(self.sizes)
        hashed = np.array([name.startswith("hash") for name in self.names], bool)
        return {"groups": len(self.names), "category_groups": int((~hashed).sum()),
                "hash_groups": int(hashed.sum()),
                "items_by_category": int(sizes[~hashed].sum()),
                "items_hashed": int(sizes[hashed].sum()),
                "largest_group": int(sizes.max()) if len(sizes) else 0,
                "smallest_group": int(sizes.min()) if len(sizes) else 0}


def group_items(item_ids: np.ndarray, categories: np.ndarray, hash_group_count: int
                ) -> ItemGroups:
    """Groups of the item space: one per first-level category, the items without one
    (category < 0, i.e. schema.PAD_ID) hashed into at most hash_group_count groups.

    item_ids: int [N] the item space's ids (column order); categories: int [N] their raw
    first-level category ids.
    """
    if len(item_ids) != len(categories):
        raise ValueError(f"{len(item_ids)} items but {len(categories)} categories")
    known = categories >= 0
    category_ids = np.unique(categories[known])
    group = np.empty(len(item_ids), np.int64)
    group[known] = np.searchsorted(category_ids, categories[known])
    hashed = hash_groups(item_ids[~known], hash_group_count)
    used = np.unique(hashed)                      # only non-empty hash groups become groups
    group[~known] = len(category_ids) + np.searchsorted(used, hashed)
    names = [f"category {c}" for c in category_ids] + [f"hash {h}" for h in used]
    return ItemGroups(group.astype(np.int32), names)


def read_item_groups(data_dir: str, item_ids: np.ndarray, hash_group_count: int) -> ItemGroups:
    """The groups of `item_ids` from the Beam job's `<data_dir>/item_categories.tsv` (read by
    data.item_categories). Without that file every item is hashed, with a warning."""
    if tf.io.gfile.exists(f"{data_dir}/{S.ITEM_CATEGORIES_FILE}"):
        categories = data.item_categories(data_dir, item_ids.tolist())[2:, 0]
    else:
        LOG.warning("%s/%s not found: hashing all %d items into %d latent groups", data_dir,
                    S.ITEM_CATEGORIES_FILE, len(item_ids), hash_group_count)
        categories = np.full(len(item_ids), S.PAD_ID, np.int64)
    return group_items(item_ids, categories, hash_group_count)
