"""Item groups of latent diffusion (L-DiffRec): items split by their first-level category; items
without one clustered by k-means on a trained CTR model's item embeddings (when one is given and
knows them), the rest hashed, into a fixed number of groups each.

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

from qrec_tf import layout
from qrec_tf import schema as S
from qrec_tf.data_dir import DataDirectory

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

    group_of_column: int32 [N] in [0, C); names: [C] ("category <id>", "kmeans <i>" or
    "hash <i>"), categories first (ascending id), then the non-empty k-means clusters, then the
    non-empty hash groups; every group has at least one item.
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
        kind = np.array([name.split()[0] for name in self.names])
        return {"groups": len(self.names), "category_groups": int((kind == "category").sum()),
                "kmeans_groups": int((kind == "kmeans").sum()),
                "hash_groups": int((kind == "hash").sum()),
                "items_by_category": int(sizes[kind == "category"].sum()),
                "items_by_kmeans": int(sizes[kind == "kmeans"].sum()),
                "items_hashed": int(sizes[kind == "hash"].sum()),
                "largest_group": int(sizes.max()) if len(sizes) else 0,
                "smallest_group": int(sizes.min()) if len(sizes) else 0}


def kmeans(vectors: np.ndarray, clusters: int, seed: int = 0, iterations: int = 30
           ) -> np.ndarray:
    """int64 [n] cluster in [0, min(clusters, n)) of each row of float [n, d] vectors: Lloyd's
    k-means from a k-means++ start (Arthur & Vassilvitskii 2007), deterministic per seed; a
    cluster left empty keeps its centre. Squared distances are computed blockwise ([4096,
    clusters] at a time), so memory stays O(n d) at millions of rows."""
    vectors = np.asarray(vectors, np.float64)
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    clusters = min(clusters, n)
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(n)]]
    nearest = np.sum((vectors - centres[0]) ** 2, axis=1)
    for _ in range(1, clusters):
        total = nearest.sum()
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres.append(vectors[pick])
        nearest = np.minimum(nearest, np.sum((vectors - vectors[pick]) ** 2, axis=1))
    centres = np.array(centres)
    labels = np.full(n, -1, np.int64)
    for _ in range(iterations):
        new = np.concatenate([
            np.argmin(np.sum(block ** 2, 1)[:, None] - 2 * block @ centres.T
                      + np.sum(centres ** 2, 1)[None, :], axis=1)
            for block in np.array_split(vectors, max(1, n // 4096))])
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=clusters)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, vectors)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return labels


def group_items(item_ids: np.ndarray, categories: np.ndarray, hash_group_count: int,
                embeddings: np.ndarray | None = None, seed: int = 0) -> ItemGroups:
    """Groups of the item space: one per first-level category; the items without one
    (category < 0, i.e. schema.PAD_ID) clustered by `kmeans` into at most hash_group_count
    groups where `embeddings` has their vector, the others hashed into at most
    hash_group_count groups.

    item_ids: int [N] the item space's ids (column order); categories: int [N] their raw
    first-level category ids; embeddings: float [N, d] or None, a row of NaN for an item
    without a vector (e.g. a CTR model's item embeddings, `read_item_embeddings`).
    """
    if len(item_ids) != len(categories):
        raise ValueError(f"{len(item_ids)} items but {len(categories)} categories")
    if embeddings is not None and len(embeddings) != len(item_ids):
        raise ValueError(f"{len(item_ids)} items but {len(embeddings)} embeddings")
    known = categories >= 0
    clustered = ~known & (np.all(np.isfinite(embeddings), axis=1) if embeddings is not None
                          else False)
    hashed = ~known & ~clustered
    category_ids = np.unique(categories[known])
    group = np.empty(len(item_ids), np.int64)
    group[known] = np.searchsorted(category_ids, categories[known])
    names = [f"category {c}" for c in category_ids]
    # Only non-empty clusters and hash groups become groups.
    for kind, mask, labels in (
            ("kmeans", clustered, lambda: kmeans(embeddings[clustered], hash_group_count, seed)),
            ("hash", hashed, lambda: hash_groups(item_ids[hashed], hash_group_count))):
        if mask.any():
            found = labels()
            used = np.unique(found)
            group[mask] = len(names) + np.searchsorted(used, found)
            names += [f"{kind} {label}" for label in used]
    return ItemGroups(group.astype(np.int32), names)


def read_item_embeddings(model_dir: str, item_ids: np.ndarray) -> np.ndarray:
    """float32 [N, d]: the item embedding table of a trained CTR model (the --model-dir of
    `python -m qrec_tf.train`) at each of `item_ids`, NaN rows for the ids its vocabulary lacks.
    (The model through `models.registry`, imported here: only this option loads model code.)"""
    from qrec_tf import model_layout
    from qrec_tf.models import registry

    _, model = registry.load_trained_model(model_dir,
                                           model_layout.resolve_data_dir(model_dir, None))
    table = model.embeddings[S.VOCAB_ITEMS].embeddings.numpy()
    row_of_id = {int(v): i + 2 for i, v in enumerate(model.vocabularies.values[S.VOCAB_ITEMS])}
    rows = np.array([row_of_id.get(int(i), -1) for i in item_ids], np.int64)
    out = np.full((len(item_ids), table.shape[1]), np.nan, np.float32)
    out[rows >= 0] = table[rows[rows >= 0]]
    return out


def read_item_groups(data_dir: DataDirectory | str, item_ids: np.ndarray, hash_group_count: int,
                     embeddings_model_dir: str = "", seed: int = 0, level: int = 1
                     ) -> ItemGroups:
    """The groups of `item_ids` from the Beam job's `<data_dir>/item_categories.tsv` (read by
    data.item_categories): its first-level categories (`level` 1) or its second-level ones
    (`level` 2, finer groups); the items without a category by k-means on the item embeddings
    of the CTR model in `embeddings_model_dir` (if given), else hashed. Without the categories
    file every item goes that way, with a warning."""
    if level not in (1, 2):
        raise ValueError(f"the category level must be 1 or 2, got {level}")
    loaded = DataDirectory.of(data_dir)
    data_dir = loaded.path
    if tf.io.gfile.exists(layout.item_categories_path(data_dir)):
        categories = loaded.item_categories(item_ids.tolist())[2:, level - 1]
    else:
        LOG.warning("%s/%s not found: grouping all %d items without categories into at most %d "
                    "latent groups (%s)", data_dir, S.ITEM_CATEGORIES_FILE, len(item_ids),
                    hash_group_count, "k-means" if embeddings_model_dir else "hashing")
        categories = np.full(len(item_ids), S.PAD_ID, np.int64)
    embeddings = None
    if embeddings_model_dir and (categories < 0).any():
        embeddings = read_item_embeddings(embeddings_model_dir, item_ids)
    return group_items(item_ids, categories, hash_group_count, embeddings, seed)
