"""Time-decayed matches between a target item and the user's searches: a target-aware count.

A search changes what a user clicks in the feed for a while after it, and the effect fades
(docs/ARCHITECTURE.md, "The query branch"). The learned query side (eq 2's attention, the SAS
encoder) has to find that from the embeddings of rarely seen queries and items; this layer hands
the model the match itself. For a target t and the user's search events e_1..e_n (an item
clicked in a search session, or a session's results), each with an attribute index per level
(item id, author, category, sub-category, ...) and an age in hours:

    m[a, k] = sum_j [attr_a(e_j) = attr_a(t)] * 0.5 ** (age_j / h_k)
    output  = log(1 + m)                                        (levels x half-lives)

with fixed half-lives h_k (default 1 h, 6 h, 24 h, 72 h, 240 h), so that a linear read of the
output can express a step window, a decay of any speed between them, or a long-lasting effect,
and the sign of each (a satisfied search may lower the clicks that follow). It has no weights:
what it adds to the click logit is learned by whoever reads it (a zero-initialised linear term in
`DINModel`). Padding and out-of-vocabulary indices (0 and 1) never match, and a search
event is never in the future of the impression (the Beam job keeps only earlier sessions).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

# Vocabulary indices below this are padding (0) and out-of-vocabulary (1).
FIRST_VOCABULARY_INDEX = 2
DEFAULT_HALF_LIVES_HOURS = (1.0, 6.0, 24.0, 72.0, 240.0)


@keras.saving.register_keras_serializable(package="qrec_tf")
class SearchMatch(keras.layers.Layer):
    """Time-decayed counts of the search events that share each attribute with the target.

    Call: `(target, events, ages, mask=None)`:
      - target: int [rows, A] attribute indices of each target item (A levels);
      - events: int [users, L, A] those of each search event, or [users, L, S, A] for S events
        per age (e.g. the items clicked in one search session, which share its age);
      - ages: float [users, L] hours from each event to the impression (>= 0);
      - mask: bool [users, L] (or [users, L, S]), True where an event is present; None when
        absent events are given as index 0 (padding never matches).
    `rows` is `users` times the number of targets per user (a user's targets consecutive, as in
    `score_candidates`). Returns float32 [rows, A * K]: log(1 + m[a, k]), level-major.
    """

    def __init__(self, half_lives_hours: Sequence[float] = DEFAULT_HALF_LIVES_HOURS,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if not half_lives_hours or min(half_lives_hours) <= 0:
            raise ValueError(f"half_lives_hours must be positive, got {half_lives_hours}")
        self.half_lives_hours = tuple(float(h) for h in half_lives_hours)

    def call(self, target: tf.Tensor, events: tf.Tensor, ages: tf.Tensor,
             mask: tf.Tensor | None = None) -> tf.Tensor:
        if events.shape.rank == 3:                                           # one event per age
            events = events[:, :, None]
            mask = None if mask is None else mask[..., None]
        users = tf.shape(events)[0]
        levels = target.shape[-1]
        targets = tf.reshape(target, [users, -1, 1, 1, levels])             # [U, K, 1, 1, A]
        events = events[:, None]                                             # [U, 1, L, S, A]
        present = events >= FIRST_VOCABULARY_INDEX
        if mask is not None:
            present = tf.logical_and(present, mask[:, None, :, :, None])
        equal = tf.logical_and(tf.equal(targets, events), present)           # [U, K, L, S, A]
        # Events of one age first, then the time decay: one pow per age, not per event.
        matches = tf.reduce_sum(tf.cast(equal, tf.float32), axis=3)           # [U, K, L, A]
        half_lives = tf.constant(self.half_lives_hours, tf.float32)
        decay = tf.pow(0.5, tf.cast(ages, tf.float32)[..., None] / half_lives)  # [U, L, H]
        counts = tf.einsum("ukla,ulh->ukah", matches, decay)                 # [U, K, A, H]
        return tf.reshape(tf.math.log1p(counts), [-1, levels * len(self.half_lives_hours)])

    def compute_output_shape(self, target_shape, *shapes):
        return (target_shape[0], target_shape[-1] * len(self.half_lives_hours))

    def get_config(self) -> dict:
        return {**super().get_config(), "half_lives_hours": list(self.half_lives_hours)}
