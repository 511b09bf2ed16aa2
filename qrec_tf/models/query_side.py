"""The query side's inputs that `DINModel` builds from a user's search history beside the query
vectors themselves (docs/ARCHITECTURE.md, "The query branch"): the clicked items' and the
results' context of each query (model.din.query_item_context) and the time-decayed search ->
target matches (model.din.search_match). Functions of the model's lookups, embeddings and
layers (`model`: a `models.din.DINModel`) and of `encode_user`'s output."""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from qrec_tf import schema as S


def clicked_items_context(model, user: dict) -> tf.Tensor:
    """[rows, Q, dim]: per query slot, the mean representation [item || category ||
    sub-category] of the items clicked in its session, through the query attention's target
    projection (0 for a slot without clicks)."""
    clicked, categories = user["clicked_idx"], user["clicked_categories"]  # [rows, Q, C(, 2)]
    # Only the real clicks are embedded (most slots are padding): each one's representation
    # projected (a linear map without bias, so the mean of the projections is the
    # projection of the mean), then averaged per query slot.
    real = tf.where(clicked != 0)                                      # [clicks, 3]
    real_categories = tf.gather_nd(categories, real)                   # [clicks, 2]
    rep = tf.concat([model.embed(S.ITEM_ID, tf.gather_nd(clicked, real)),
                     model.embed(S.CATEGORY_ID, real_categories[:, 0]),
                     model.embed(S.SUBCATEGORY_ID, real_categories[:, 1])],
                    axis=-1)                                           # [clicks, 3d]
    shape = tf.shape(clicked, tf.int64)
    slots = shape[0] * shape[1]
    slot = real[:, 0] * shape[1] + real[:, 1]
    projected = model.query_target_projection(rep)                      # [clicks, d]
    total = tf.math.unsorted_segment_sum(projected, slot, slots)
    count = tf.math.unsorted_segment_sum(tf.ones_like(projected[:, :1]), slot, slots)
    return tf.reshape(total / tf.maximum(count, 1.0),
                      tf.concat([shape[:2], [model.config.embedding_dim]], 0))


def results_context(model, user: dict) -> tf.Tensor:
    """[rows, Q, dim]: per query slot, where its session's results lie: [0 || category ||
    sub-category] of the results' majority categories through the query attention's target
    projection (0 for a slot without them), so that a query without a click, or whose words
    are rare, still points at the part of the catalogue it is about."""
    categories = user["result_categories"]                               # [rows, Q, 2]
    category = model.embed(S.CATEGORY_ID, categories[..., 0])
    subcategory = model.embed(S.SUBCATEGORY_ID, categories[..., 1])
    rep = tf.concat([tf.zeros_like(category), category, subcategory], axis=-1)
    projected = model.query_target_projection(rep)                        # [rows, Q, d]
    return tf.where((categories[..., 1:] != 0), projected, tf.zeros_like(projected))


def search_match_features(model, user: dict, features: Mapping[str, tf.Tensor],
                          item_idx: tf.Tensor) -> tf.Tensor:
    """[rows, 40] (layers.search_match, model.din.search_match): time-decayed counts of the
    user's search events that share an attribute with the target, at 5 half-lives each:
    - the items clicked in search sessions (item, author, category, sub-category);
    - the results of the sessions with a click (category, sub-category);
    - the results of the sessions without one (category, sub-category): a search that found
      nothing to click may leave a need the feed can meet, and one that did may not."""
    category = model.lookup(S.CATEGORY_ID, features[S.CATEGORY_ID])
    subcategory = model.lookup(S.SUBCATEGORY_ID, features[S.SUBCATEGORY_ID])
    author = model.lookup(S.AUTHOR_ID, features[S.AUTHOR_ID])
    clicked, attributes = user["clicked_idx"], user["clicked_categories"]  # [U, Q, C(, 3)]
    is_clicked = (clicked != 0)[..., None]                                  # [U, Q, C, 1]
    from_clicks = tf.where(is_clicked, tf.stack(
        [clicked, attributes[..., 2], attributes[..., 0], attributes[..., 1]], -1),
        tf.zeros_like(clicked)[..., None])                                 # [U, Q, C, 4]
    # A session's results as four more levels (category and sub-category of the sessions
    # with a click, then of those without), in its first click slot; the kind it is not,
    # and absent sessions, are padding (index 0 never matches). All of it is one call of
    # eight levels: the columns of one call per part concatenated, in fewer ops.
    had_click = tf.reduce_any(is_clicked, axis=2)                          # [U, Q, 1]
    results = tf.where(user["query_present"][..., None], user["result_categories"],
                       tf.zeros_like(user["result_categories"]))           # [U, Q, 2]
    zeros = tf.zeros_like(results)
    by_kind = tf.concat([tf.where(had_click, results, zeros),
                         tf.where(had_click, zeros, results)], -1)         # [U, Q, 4]
    slots = tf.shape(clicked)[2]
    from_results = tf.concat(
        [by_kind[:, :, None],
         tf.zeros(tf.concat([tf.shape(by_kind)[:2], [slots - 1, 4]], 0), by_kind.dtype)],
        2)                                                                 # [U, Q, C, 4]
    target = tf.stack([item_idx, author, category, subcategory,
                       category, subcategory, category, subcategory], -1)
    return model.search_match(target, tf.concat([from_clicks, from_results], -1),
                             user["query_ages"])
