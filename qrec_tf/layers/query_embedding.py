"""A query's vector: its key's embedding plus the mean of its words' embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

from qrec_tf.layers.embedding import SparseEmbedding

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class QueryEmbedding(keras.layers.Layer):
    """e_q = key_embedding(key) + mean of word_embedding(w) over the query's words (ids != 0).

    The word mean is what gives a query never seen in training (key = the OOV index 1) a
    meaningful vector at serving time. Ids are lookup indices with 0 = padding: key 0 contributes
    zeros (its table row is never read into the output), a query without words gets no word term,
    so a padded query (key 0, no words) is exactly zero.

    Call: key_ids int [batch, ...] and word_ids int [batch, ..., words] -> [batch, ..., dim],
    e.g. key_ids [batch] with word_ids [batch, words], or key_ids [batch, q] with word_ids
    [batch, q, words].

    The two tables are `key_embedding` and `word_embedding`; a subclass can change their class by
    overriding `_make_embedding`.
    """

    def __init__(self, num_query_keys: int, num_words: int, dim: int,
                 embeddings_initializer: Any = "uniform",
                 embeddings_regularizer: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_query_keys = num_query_keys
        self.num_words = num_words
        self.dim = dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.key_embedding = self._make_embedding(num_query_keys, "key_embedding")
        self.word_embedding = self._make_embedding(num_words, "word_embedding")

    def _make_embedding(self, input_dim: int, name: str) -> keras.layers.Layer:
        """A table [input_dim, dim] called as ids [...] -> [..., dim]."""
        return keras.layers.Embedding(input_dim, self.dim, name=name,
                                      embeddings_initializer=self.embeddings_initializer,
                                      embeddings_regularizer=self.embeddings_regularizer)

    def build(self, key_ids_shape: tuple, word_ids_shape: tuple | None = None) -> None:
        self.key_embedding.build(key_ids_shape)
        self.word_embedding.build(word_ids_shape or key_ids_shape)

    def call(self, key_ids: tf.Tensor, word_ids: tf.Tensor) -> tf.Tensor:
        keys = self.key_embedding(key_ids)                                # [batch, ..., dim]
        key_real = ops.expand_dims(ops.not_equal(key_ids, 0), -1)
        keys = ops.where(key_real, keys, ops.zeros_like(keys))
        words = self.word_embedding(word_ids)                             # [..., words, dim]
        word_real = ops.expand_dims(ops.not_equal(word_ids, 0), -1)
        words = ops.where(word_real, words, ops.zeros_like(words))
        count = ops.sum(ops.cast(word_real, words.dtype), axis=-2)       # [batch, ..., 1]
        mean = ops.sum(words, axis=-2) / ops.maximum(count, 1.0)
        return keys + ops.cast(mean, keys.dtype)

    def compute_output_shape(self, key_ids_shape: tuple,
                             word_ids_shape: tuple | None = None) -> tuple:
        return (*key_ids_shape, self.dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_query_keys": self.num_query_keys,
                "num_words": self.num_words, "dim": self.dim,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)}


class SparseQueryEmbedding(QueryEmbedding):
    """QueryEmbedding whose tables read only the looked-up rows (see SparseEmbedding)."""

    def _make_embedding(self, input_dim, name):
        return SparseEmbedding(input_dim, self.dim, name=name)
