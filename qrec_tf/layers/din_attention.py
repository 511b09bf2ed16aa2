"""DIN target attention: adaptive pooling of a sequence given a target (docs/PAPER.md eqs 1-2)."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from keras import ops

from qrec_tf.layers.dense_stack import dense_layers
from qrec_tf.layers.dice import Dice
from qrec_tf.layers.xla import in_xla_context


@keras.saving.register_keras_serializable(package="qrec_tf")
class DINAttention(keras.layers.Layer):
    """v = sum_t a(q, k_t) k_t with a(q, k) = MLP([q, k, q - k, q * k]) (DIN's activation unit).

    The score MLP is Dense(hidden_units[i]) + activation per hidden layer ("dice": a `Dice` layer
    after each Dense, else any Keras activation name) and a final linear Dense(1).

    Without softmax (DIN's choice, which keeps the intensity of the interest) the weights are the
    raw scores with padded positions set to 0; with `use_softmax=True` they are a softmax over the
    valid positions, and a row without any valid position gets all-zero weights.

    Padded keys are replaced by zeros before anything reads them and Dice's batch statistics skip
    them, so the values a padded key holds never change any output.

    `packed=True` (the default) scores only the real (query row, key) pairs: they are gathered
    into one [pairs, units] matrix before the score MLP and the scores scattered back to
    [batch, seq_len]. The values are those of the padded computation (the same pairs, the same
    batch statistics); the work follows the real sequence length instead of seq_len, which on
    logs with short histories is most of a DIN step (docs/RESULTS.md, issue 21). `packed=False`
    scores every position of [batch, seq_len, units]; it is also what runs under XLA (this
    layer's `jit_compile`, or a caller's such as the export's compiled scoring: static shapes).

    Call: query [batch, dim], keys [batch, seq_len, dim], mask bool [batch, seq_len] (True = real)
    -> pooled [batch, dim]; with return_weights=True also the weights [batch, seq_len].
    """

    def __init__(self, hidden_units: Sequence[int] = (80, 40), activation: str = "dice",
                 use_softmax: bool = False, jit_compile: bool = False, packed: bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_units = [int(units) for units in hidden_units]
        self.activation = activation
        self.use_softmax = use_softmax
        # XLA on the scoring and pooling (everything after the inputs): it fuses the chains of
        # element-wise work on [batch, seq_len, units] (Dice, masks), most of a DIN step on a
        # CPU (docs/RESULTS.md, issue 21). Not under several replicas (Dice all-reduces there).
        self.jit_compile = bool(jit_compile)
        self.packed = bool(packed)
        self._compiled_pool = None
        layers = dense_layers(self.hidden_units, activation)
        self.dense_layers = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
        self.dice_layers = [layer for layer in layers if isinstance(layer, Dice)]
        self.score_dense = keras.layers.Dense(1, name="score")

    def build(self, query_shape: tuple, keys_shape: tuple | None = None,
              mask_shape: tuple | None = None) -> None:
        shape = (None, None, 4 * query_shape[-1])
        for i, dense in enumerate(self.dense_layers):
            dense.build(shape)
            shape = dense.compute_output_shape(shape)
            if self.dice_layers:
                self.dice_layers[i].build(shape)
        self.score_dense.build(shape)

    def call(self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor,
             training: bool | None = None, return_weights: bool = False,
             queries_per_key_row: int | tf.Tensor | None = None
             ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """`queries_per_key_row`: when given, keys [users, seq_len, dim] and mask [users,
        seq_len] each serve that many consecutive query rows (query [users * n, dim]: one user's
        candidates; weights [users * n, seq_len]); what depends on the keys alone is computed once
        per user and the keys are broadcast, never repeated."""
        mask = ops.cast(mask, "bool")
        keys = ops.where(ops.expand_dims(mask, -1), keys, ops.zeros_like(keys))
        # Without queries_per_key_row each key row serves one query: n = 1.
        users = ops.shape(keys)[0]
        query = ops.reshape(query, (users, -1, query.shape[-1]))           # [users, n, dim]
        # XLA (this layer's jit_compile, or a caller's: the export's compiled scoring) needs
        # static shapes, where packing would only add work: it runs the padded computation.
        packed = self.packed and not self.jit_compile and not in_xla_context()
        pool = self._packed_pool if packed else self._pool
        if self.jit_compile and tf.distribute.get_replica_context() is not None and (
                tf.distribute.get_replica_context().num_replicas_in_sync == 1):
            if self._compiled_pool is None:
                self._compiled_pool = tf.function(self._pool, jit_compile=True)
            pool = self._compiled_pool
        pooled, weights = pool(query, keys, mask, bool(training))
        pooled = ops.reshape(pooled, (-1, keys.shape[-1]))
        return (pooled, ops.reshape(weights, (-1, ops.shape(keys)[1]))) if return_weights \
            else pooled

    def _pool(self, query, keys, mask, training=None):
        """query [users, n, dim], keys [users, seq_len, dim], mask [users, seq_len] ->
        (pooled [users, n, dim], weights [users, n, seq_len])."""
        x = ops.expand_dims(self._key_part(keys), 1) + self._query_part(
            ops.expand_dims(query, 2), ops.expand_dims(keys, 1))           # [users, n, seq, units]
        users, seq_len = ops.shape(keys)[0], ops.shape(keys)[1]
        # The score MLP (and Dice's batch statistics) sees [users * n, seq_len, units] rows.
        mask = ops.reshape(ops.broadcast_to(ops.expand_dims(mask, 1), ops.shape(x)[:-1]),
                           (-1, seq_len))
        weights = self._weights(ops.reshape(x, (-1, seq_len, x.shape[-1])), mask, training)
        weights = ops.reshape(weights, (users, -1, seq_len))
        return ops.einsum("uns,usd->und", weights, keys), weights

    def _packed_pool(self, query, keys, mask, training=None):
        """`_pool` on the real pairs only: query [users, n, dim], keys [users, seq_len, dim], mask
        [users, seq_len] -> (pooled [users, n, dim], weights [users, n, seq_len])."""
        shape = tf.concat([tf.shape(query, tf.int64)[:2], tf.shape(keys, tf.int64)[1:2]], 0)
        # pairs [pairs, 3]: (user, query row, position) of every real key of every query row.
        pairs = tf.where(tf.broadcast_to(mask[:, None, :], shape))
        keys_of_pairs = tf.gather_nd(keys, tf.gather(pairs, [0, 2], axis=1))  # [pairs, dim]
        # The query's own part of the first layer, once per query row, then one row per pair.
        query_part = tf.gather_nd(self._query_row_part(query), pairs[:, :2])  # [pairs, units]
        x = (self._key_part(keys_of_pairs) + query_part + ops.matmul(
            tf.gather_nd(query, pairs[:, :2]) * keys_of_pairs, self._kernel_blocks(keys.dtype)[3]))
        scores = tf.scatter_nd(pairs, self._scores(x, None, training), shape)
        weights = self._normalised(ops.reshape(scores, (-1, shape[2])), ops.reshape(
            tf.broadcast_to(mask[:, None, :], shape), (-1, shape[2])))
        weights = ops.reshape(weights, shape)
        return ops.einsum("uns,usd->und", weights, keys), weights

    def _weights(self, x, mask, training):
        """First-layer pre-activations x [rows, seq_len, units], mask [rows, seq_len] ->
        attention weights [rows, seq_len]."""
        return self._normalised(self._scores(x, mask, training), mask)

    def _scores(self, x, mask, training):
        """The score MLP after the first layer's matmul: pre-activations x [..., units] (mask
        [...] or None: every row real, for Dice's batch statistics) -> float32 scores [...]."""
        for i, dense in enumerate(self.dense_layers):
            if i:
                x = dense(x)
            elif dense.activation is not None:
                x = dense.activation(x)
            if self.dice_layers:
                x = self.dice_layers[i](x, training=training, mask=mask)
        # float32: the softmax's large negative fill would overflow float16.
        return ops.cast(ops.squeeze(self.score_dense(x), -1), "float32")

    def _normalised(self, scores, mask):
        """float32 scores [rows, seq_len], mask [rows, seq_len] -> weights [rows, seq_len] in the
        layer's compute dtype."""
        if self.use_softmax:
            scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
            weights = ops.softmax(scores, axis=-1)
        else:
            weights = scores
        # Also what zeroes a row without valid positions (its softmax is uniform over padding).
        weights = ops.where(mask, weights, ops.zeros_like(weights))
        return ops.cast(weights, self.compute_dtype)

    # dense0([q, k, q - k, q * k]) without building the [batch, seq_len, 4 * dim] input: with the
    # kernel's row blocks W_q, W_k, W_d, W_p it is k (W_k - W_d) + (q * k) W_p + q (W_q + W_d) + b.
    # The key part does not depend on the query (once per user when candidates share a history)
    # and the query part of q is computed once per row, not per position: the values are those
    # of the Dense layer applied to the concatenation, for half its work.
    def _kernel_blocks(self, dtype) -> list[tf.Tensor]:
        kernel = ops.cast(self.dense_layers[0].kernel, dtype)
        dim = kernel.shape[0] // 4
        return [kernel[i * dim:(i + 1) * dim] for i in range(4)]

    def _key_part(self, keys: tf.Tensor) -> tf.Tensor:
        """k (W_k - W_d): [.., seq_len, dim] -> [.., seq_len, units]."""
        _, w_k, w_d, _ = self._kernel_blocks(keys.dtype)
        return ops.matmul(keys, w_k - w_d)

    def _query_part(self, query: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
        """(q * k) W_p + q (W_q + W_d) + b: query [..., 1, dim] and keys [..., seq_len, dim]
        (broadcasting) -> [..., seq_len, units]."""
        w_p = self._kernel_blocks(keys.dtype)[3]
        return ops.matmul(query * keys, w_p) + self._query_row_part(query)

    def _query_row_part(self, query: tf.Tensor) -> tf.Tensor:
        """q (W_q + W_d) + b: [..., dim] -> [..., units]."""
        dense = self.dense_layers[0]
        w_q, _, w_d, _ = self._kernel_blocks(query.dtype)
        per_row = ops.matmul(query, w_q + w_d)
        if dense.use_bias:
            per_row = per_row + ops.cast(dense.bias, query.dtype)
        return per_row

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        # `mask` is an explicit argument consumed here: no Keras mask rides on the outputs (and
        # Keras does not warn that one is dropped when `mask` is passed by keyword).
        return None

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": list(self.hidden_units),
                "activation": self.activation, "use_softmax": self.use_softmax,
                "jit_compile": self.jit_compile, "packed": self.packed}
