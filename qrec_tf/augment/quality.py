"""The quality check, independent of the CTR model: Recall@K and NDCG@K on held-out clicks,
for the diffusion model and for global click popularity."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qrec_tf.augment.config import AugmentConfig
from qrec_tf.augment.generation import ItemScores, rank_items
from qrec_tf.augment.vectors import DenseRows, QueryItemMatrix


def ranking_quality(ranked: np.ndarray, targets: Sequence[np.ndarray], k: int) -> dict:
    """Mean Recall@k (hits / |targets|) and NDCG@k (binary gains) over queries.

    ranked: int [queries, >= k] item columns, best first (-1 = none); targets: per query the
    held-out item columns.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, target in zip(ranked[:, :k], targets):
        hits = np.isin(row, target) & (row >= 0)
        recalls.append(hits.sum() / len(target))
        ndcgs.append((hits * discounts).sum() / discounts[:min(len(target), k)].sum())
    return {"recall": round(float(np.mean(recalls)), 4) if recalls else None,
            "ndcg": round(float(np.mean(ndcgs)), 4) if ndcgs else None}


def popularity_ranking(matrix: QueryItemMatrix, rows: np.ndarray, k: int) -> np.ndarray:
    """Items by total clicks in `matrix` (ties: column order), without each row's own entries."""
    clicks = np.bincount(matrix.columns, weights=matrix.click_counts, minlength=0)
    order = np.lexsort((np.arange(len(clicks)), -clicks))
    out = np.full((len(rows), k), -1, np.int32)
    for i, row in enumerate(rows):
        seen = matrix.columns[matrix.row_splits[row]:matrix.row_splits[row + 1]]
        # Only the first k + |seen| items can be among the k best unseen ones: no pass over all
        # N items per query (N = 2M with model.latent).
        candidates = order[:k + len(seen)]
        ranked = candidates[~np.isin(candidates, seen)][:k]
        out[i, :len(ranked)] = ranked
    return out


def quality_check(item_scores: ItemScores, batch_size: int, train_dense: DenseRows,
                  train_matrix: QueryItemMatrix, full: QueryItemMatrix, held_rows: np.ndarray,
                  held: np.ndarray, config: AugmentConfig) -> dict:
    """Recall@K / NDCG@K of diffusion and popularity on the held-out clicks; item_scores gives
    the model's scores (generation.rank_items), batch_size queries at a time."""
    k = config.output.quality_k
    # Each row's own entries (CSR slices), not a pass over all entries per held-out row.
    targets = [full.columns[start:stop][held[start:stop]]
               for start, stop in zip(full.row_splits[held_rows], full.row_splits[held_rows + 1])]
    result = {"k": k, "queries": int(len(held_rows)), "held_out_clicks": int(held.sum())}
    if not len(held_rows):
        return {**result, "diffusion": None, "popularity": None}
    ranked = rank_items(item_scores, train_dense, held_rows, k, True, batch_size,
                        config.train.seed + 1)
    result = {**result, "diffusion": ranking_quality(ranked, targets, k),
              "popularity": ranking_quality(popularity_ranking(train_matrix, held_rows, k),
                                            targets, k)}
    return {**result, "below_popularity": below_popularity(result)}


def below_popularity(quality: dict) -> bool:
    """Whether the model's Recall@K on the held-out clicks is below that of ranking every query's
    items by global click popularity (a model that a constant ranking beats)."""
    model, popularity = quality.get("diffusion"), quality.get("popularity")
    return bool(model and popularity and model["recall"] < popularity["recall"])
