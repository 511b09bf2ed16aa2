"""SASRec-style self-attention encoder of the query sequence (docs/PAPER.md, NIP)."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from qrec_tf.layers.xla import in_xla_context


@keras.saving.register_keras_serializable(package="qrec_tf")
class SASBlock(keras.layers.Layer):
    """One SASRec block (pre-LayerNorm variant, as in SASRec's reference code).

    h = x + MHA(LN(x), x, attention_mask); out = h + Dropout(FFN(LN(h))) with
    FFN = Dense(ffn_dim, relu) -> Dropout -> Dense(dim); padded positions of out are set to 0 so
    they never carry values into the next block.

    Call: x [batch, seq_len, dim], attention_mask bool [batch, seq_len, seq_len] (query position,
    key position; True = may attend), mask bool [batch, seq_len] -> [batch, seq_len, dim]; with
    `last_only=True` only the last position's output [batch, 1, dim] (the same values: attention
    reads every position as a key, the rest is position-wise).
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.2,
                 ffn_dim: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.dropout, self.ffn_dim = dim, num_heads, dropout, ffn_dim
        # SASRec's epsilon: its inputs are small embeddings scaled by sqrt(dim).
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, dim // num_heads, dropout=dropout, name="attention")
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="ffn_norm")
        self.ffn_in = keras.layers.Dense(ffn_dim or dim, activation="relu", name="ffn_in")
        self.ffn_dropout = keras.layers.Dropout(dropout)
        self.ffn_out = keras.layers.Dense(dim, name="ffn_out")
        self.output_dropout = keras.layers.Dropout(dropout)

    def build(self, x_shape: tuple, attention_mask_shape: tuple | None = None,
              mask_shape: tuple | None = None) -> None:
        shape = (None, None, self.dim)
        self.attention_norm.build(shape)
        self.attention.build(shape, shape)
        self.ffn_norm.build(shape)
        self.ffn_in.build(shape)
        self.ffn_out.build((None, None, self.ffn_dim or self.dim))

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, mask: tf.Tensor,
             training: bool | None = None, last_only: bool = False) -> tf.Tensor:
        queries = x
        if last_only:
            queries, attention_mask, mask = x[:, -1:], attention_mask[:, -1:], mask[:, -1:]
        h = queries + self.attention(self.attention_norm(queries), x,
                                     attention_mask=attention_mask, training=training)
        f = self.ffn_in(self.ffn_norm(h))
        f = self.ffn_out(self.ffn_dropout(f, training=training))
        h = h + self.output_dropout(f, training=training)
        return ops.where(ops.expand_dims(mask, -1), h, ops.zeros_like(h))

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        # `mask` is an explicit argument consumed here: no Keras mask rides on the outputs (and
        # Keras does not warn that one is dropped when `mask` is passed by keyword).
        return None

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "dropout": self.dropout, "ffn_dim": self.ffn_dim}


@keras.saving.register_keras_serializable(package="qrec_tf")
class SASEncoder(keras.layers.Layer):
    """Causal self-attention over a left-padded sequence (SASRec, Kang & McAuley 2018).

    x * sqrt(dim) + learned positional embedding -> dropout -> `num_blocks` SASBlocks (causal
    multi-head self-attention with padded keys masked, point-wise FFN) -> final LayerNorm.

    Positions are counted from the right end: the last (most recent) slot always gets position
    max_len - 1, so a sequence shorter than max_len is encoded as its left-padded version of
    length max_len would be. seq_len must be <= max_len.

    Call: x [batch, seq_len, dim], mask bool [batch, seq_len] (True = real) -> [batch, dim], the
    output at the last position (the most recent query), all zeros for a row without any real
    position; or every position [batch, seq_len, dim] (padded ones zero) with
    return_sequences=True. The output at position k depends on positions <= k only, and the
    values held by padded positions change nothing.

    `bucketed=True` (the default; last position only, outside XLA): the rows are encoded in
    groups by their span (the positions from a row's first real one to the end), each group cut
    to the last 2, 4, 8, ... positions that hold its spans. Since positions count from the right
    end and the positions before a row's first real one are padding, a row's output is the one
    of the whole row; the work follows the real lengths instead of seq_len (on search logs most
    users have a few queries: docs/RESULTS.md, issue 21). Rows without any real position are not
    encoded (their output is zeros). In training, dropout draws other random numbers than the
    unbucketed call, from the same distribution.
    """

    def __init__(self, max_len: int, dim: int, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, ffn_dim: int | None = None, bucketed: bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.bucketed = bool(bucketed)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.max_len, self.dim, self.num_blocks = max_len, dim, num_blocks
        self.num_heads, self.dropout, self.ffn_dim = num_heads, dropout, ffn_dim
        self.position_embedding = keras.layers.Embedding(max_len, dim, name="position_embedding")
        self.input_dropout = keras.layers.Dropout(dropout)
        self.blocks = [SASBlock(dim, num_heads, dropout, ffn_dim, name=f"block{i}")
                       for i in range(num_blocks)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8, name="final_norm")

    def build(self, x_shape: tuple, mask_shape: tuple | None = None) -> None:
        shape = (None, None, self.dim)
        self.position_embedding.build((self.max_len,))
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)

    def call(self, x: tf.Tensor, mask: tf.Tensor, training: bool | None = None,
             return_sequences: bool = False) -> tf.Tensor:
        mask = ops.cast(mask, "bool")
        if self.bucketed and not return_sequences and not in_xla_context():
            return self._encode_by_span(x, mask, training)
        return self._encode(x, mask, training, return_sequences)

    def _encode_by_span(self, x: tf.Tensor, mask: tf.Tensor, training: bool | None
                        ) -> tf.Tensor:
        """The last position's output [batch, dim] (`bucketed`): each row encoded with only the
        last `width` positions, width the smallest of 2, 4, 8, ..., seq_len that holds its span."""
        seq_len = x.shape[1]
        if seq_len is None:          # no static length to cut at: the whole rows
            return self._encode(x, mask, training, False)
        rows = tf.shape(x, tf.int64)[0]
        # span: seq_len - the index of the first real position; 0 for a row without any.
        first_real = tf.argmax(tf.cast(mask, tf.int32), axis=1, output_type=tf.int64)
        span = tf.where(tf.reduce_any(mask, axis=1), seq_len - first_real, 0)
        widths = sorted({min(2 ** i, seq_len) for i in range(1, seq_len.bit_length() + 1)})
        indices, outputs, narrower = [], [], 0
        for width in widths:
            in_group = tf.where((span > narrower) & (span <= width))            # [rows_g, 1]
            rows_x = tf.gather_nd(x, in_group)[:, seq_len - width:]
            rows_mask = tf.gather_nd(mask, in_group)[:, seq_len - width:]
            indices.append(in_group)
            outputs.append(self._encode(rows_x, rows_mask, training, False))  # [rows_g, dim]
            narrower = width
        return tf.scatter_nd(tf.concat(indices, 0), tf.concat(outputs, 0),
                             tf.stack([rows, self.dim]))

    def _encode(self, x: tf.Tensor, mask: tf.Tensor, training: bool | None,
                return_sequences: bool) -> tf.Tensor:
        real = ops.expand_dims(mask, -1)
        seq_len = ops.shape(x)[1]
        positions = self.position_embedding(ops.arange(self.max_len - seq_len, self.max_len))
        h = x * math.sqrt(self.dim) + ops.cast(positions, x.dtype)
        # where, not a multiplication: a padded position holding inf or nan must give 0 too.
        h = ops.where(real, self.input_dropout(h, training=training), ops.zeros_like(h))
        causal = ops.tril(ops.ones((seq_len, seq_len), dtype="bool"))
        attention_mask = ops.logical_and(ops.expand_dims(causal, 0), ops.expand_dims(mask, 1))
        for i, block in enumerate(self.blocks):
            # Only the last position is returned: the last block computes it alone.
            last_only = not return_sequences and i == len(self.blocks) - 1
            h = block(h, attention_mask, mask, training=training, last_only=last_only)
        if not return_sequences:
            h, real = h[:, -1:], real[:, -1:]
        h = self.final_norm(h)
        h = ops.where(real, h, ops.zeros_like(h))
        return h if return_sequences else h[:, -1, :]

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        # `mask` is an explicit argument consumed here: no Keras mask rides on the outputs (and
        # Keras does not warn that one is dropped when `mask` is passed by keyword).
        return None

    def get_config(self) -> dict:
        return {**super().get_config(), "max_len": self.max_len, "dim": self.dim,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout, "ffn_dim": self.ffn_dim, "bucketed": self.bucketed}
