"""How much of a user's search clicks fall in the target item's categories: a target-aware count.

The query attention (eq 2) can in principle learn that a query whose session clicked items of
sub-category s raises the click probability of a target of sub-category s, but it has to learn it
from the embeddings of rarely seen queries and items, through an attention MLP and the CTR MLP.
On the generated default regime it did not (docs/RESULTS.md, "QueryRec on logs it was not
developed on", part 8: a logistic "searched this sub-category" flag added +0.02 test AUC to
every trained query model). This layer hands the CTR MLP the match itself, as counts of equal
category ids; it has no weights, so it cannot overfit, and where searches say nothing about the
feed the MLP gives it weight ~0.

For target t and the items c_1..c_n clicked in the user's search sessions (query_clicked_item_ids,
padding excluded), with cat(.) and sub(.) an item's first- and second-level category indices:

    m_cat = #{j : cat(c_j) = cat(t)},   m_sub = #{j : sub(c_j) = sub(t)}
    output = [log(1 + m_cat), log(1 + m_sub), m_cat / max(n, 1), m_sub / max(n, 1)]

Padding and out-of-vocabulary categories (indices 0 and 1) never match.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Vocabulary indices below this are padding (0) and out-of-vocabulary (1).
FIRST_VOCABULARY_INDEX = 2


class CategoryMatch(keras.layers.Layer):
    """Counts and shares of the user's search-clicked items in the target's categories.

    Call: `(target_categories, clicked_categories, clicked_mask)`:
      - target_categories: int [rows, G] category indices of each target item (G levels,
        e.g. [category, sub-category]);
      - clicked_categories: int [users, L, G] those of the items clicked in the user's searches;
      - clicked_mask: bool [users, L], True where a clicked item is present.
    `rows` is `users` times the number of targets per user (a user's targets consecutive, as in
    `score_candidates`). Returns float32 [rows, 2 * G]: log(1 + count) per level, then share of
    the user's clicked items per level.
    """

    def call(self, target_categories: tf.Tensor, clicked_categories: tf.Tensor,
             clicked_mask: tf.Tensor) -> tf.Tensor:
        users = tf.shape(clicked_categories)[0]
        levels = tf.shape(target_categories)[-1]
        targets = tf.reshape(target_categories, [users, -1, 1, levels])     # [U, K, 1, G]
        clicked = clicked_categories[:, None]                                # [U, 1, L, G]
        valid = tf.logical_and(clicked_mask[:, None, :, None],
                               clicked >= FIRST_VOCABULARY_INDEX)            # [U, 1, L, G]
        equal = tf.logical_and(tf.equal(targets, clicked), valid)            # [U, K, L, G]
        counts = tf.reduce_sum(tf.cast(equal, tf.float32), axis=2)           # [U, K, G]
        clicks = tf.reduce_sum(tf.cast(clicked_mask, tf.float32), axis=1)    # [U]
        shares = counts / tf.maximum(clicks, 1.0)[:, None, None]
        out = tf.concat([tf.math.log1p(counts), shares], axis=-1)           # [U, K, 2G]
        return tf.reshape(out, [-1, 2 * levels])

    def compute_output_shape(self, target_shape, clicked_shape=None, mask_shape=None):
        return (target_shape[0], 2 * target_shape[-1])
