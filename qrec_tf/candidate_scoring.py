"""Serving's candidate scoring (the export's `score_candidates` signature): each user's context
once, its N candidate items as a matrix, and the XLA path that compiles everything after the
vocabulary lookups, in buckets of the request's shape.

What a model knows stays on the model: `CTRModel.index_features` (raw ids -> indices),
`CTRModel.score_candidate_features` (the scores of one [users, N] grid; DIN computes the user
side once per user) and `CTRModel.indexed_inputs` (inputs that are indices already). This module
adds the padding to buckets and the compiled function (docs/ARCHITECTURE.md, "Serving: XLA
after the lookups, in buckets")."""

from __future__ import annotations

import weakref
from typing import Mapping

import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.layers.xla import static_shapes

# The candidate count n is padded before XLA compiles it: up to the next power of two or 1.5 x a
# power of two (at least MIN_CANDIDATE_STEP): two shapes per doubling of n (13 up to 512), each
# about 1.5-3 s of compilation that the export's warmup requests pay on load (issue 32; eight
# per doubling made 32 buckets, over a minute of warmup), for at most 1/2 more work.
MIN_CANDIDATE_STEP = 8

# model -> its compiled scoring function (one per model: XLA compiles it once per bucket).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def next_power_of_two(n: tf.Tensor) -> tf.Tensor:
    """Smallest power of two >= n (int32 scalar, 1 <= n <= 2**30): n - 1 with every bit below
    its highest set bit set, plus one (exact, unlike a float log)."""
    n = tf.cast(n, tf.int32) - 1
    for shift in (1, 2, 4, 8, 16):
        n = tf.bitwise.bitwise_or(n, tf.bitwise.right_shift(n, shift))
    return n + 1


def bucket_of(n: tf.Tensor) -> tf.Tensor:
    """The candidate count n (int32 scalar >= 1) rounded up to its XLA bucket: the smallest of
    p / 2 + p / 4 and p >= n, p the smallest power of two >= n, and at least
    MIN_CANDIDATE_STEP."""
    power = next_power_of_two(n)
    three_quarters = power // 2 + power // 4
    bucket = tf.where(n <= three_quarters, three_quarters, power)
    return tf.maximum(MIN_CANDIDATE_STEP, bucket)


def candidate_bucket(n: int) -> int:
    """`bucket_of` in Python (the export's warmup requests: one per bucket)."""
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    return max(MIN_CANDIDATE_STEP, power * 3 // 4 if n <= power * 3 // 4 else power)


def score_candidates(model, context: Mapping[str, tf.Tensor],
                     candidates: Mapping[str, tf.Tensor], compiled: bool = False) -> tf.Tensor:
    """Click probabilities of each user's candidate items, float32 [users, N] (`model`: a
    `models.base.CTRModel`).

    `context`: every non-item model feature, [users, *shape]; `candidates`: the item features
    (schema group "item"), [users, N]. With `compiled` (the export's default), the vocabulary
    lookups run first and everything after them runs as one XLA computation, with the users
    padded to a power of two and N to a bucket (MIN_CANDIDATE_STEP) so that XLA compiles once
    per bucket rather than once per request shape.
    """
    if not compiled:
        return model.score_candidate_features(context, candidates)
    context, candidates = model.index_features(context), model.index_features(candidates)
    users, n = tf.unstack(tf.shape(candidates[S.ITEM_ID]))
    # Padding users and candidates are index 0 everywhere (the padding rows); their scores are
    # cut off below. Users are padded to a power of two, candidates by at most 1/2 (bucket_of):
    # a bounded number of shapes to compile under request batching.
    extra_users = next_power_of_two(users) - users
    extra_n = bucket_of(n) - n
    context = {name: tf.pad(values, [[0, extra_users]] + [[0, 0]] * (len(values.shape) - 1))
               for name, values in context.items()}
    candidates = {name: tf.pad(values, [[0, extra_users], [0, extra_n]])
                  for name, values in candidates.items()}
    if model not in _COMPILED:
        # No autograph: the scoring has no tensor-dependent Python control flow, and with it
        # the DIN models' compiled scoring failed in a session that had built many models
        # before ("tf__embed() takes 3 positional arguments but 4 were given", in
        # `pytest tests/qrec_tf/models`; each test alone passed). Without it, all pass.
        _COMPILED[model] = tf.function(model.score_candidate_features, jit_compile=True,
                                       autograph=False)
    # Read while the compiled function traces; static_shapes: the layers' padded paths.
    with model.indexed_inputs(), static_shapes():
        scores = _COMPILED[model](context, candidates)
    return scores[:users, :n]
