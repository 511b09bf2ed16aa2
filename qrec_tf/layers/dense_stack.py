"""The Dense + activation stacks every model and layer here builds (FuxiCTR's MLP_Block)."""

from __future__ import annotations

from typing import Sequence

import keras

from qrec_tf.layers.dice import Dice


def dense_layers(units: Sequence[int], activation: str, prefix: str = "",
                 dropout: float = 0.0) -> list[keras.layers.Layer]:
    """Per hidden layer i: Dense(units[i]) with `activation`, any Keras activation name, or
    a linear Dense followed by DIN's `Dice` layer ("dice"); then Dropout(dropout) when
    dropout > 0. Layer names: <prefix>dense<i>, <prefix>dice<i>, <prefix>dropout<i>.

    Layers are created in that order (Keras draws each initializer's seed when its layer is
    created, so the order fixes the initial weights under a seed)."""
    use_dice = activation == "dice"
    layers = []
    for i, n in enumerate(units):
        layers.append(keras.layers.Dense(int(n), activation=None if use_dice else activation,
                                         name=f"{prefix}dense{i}"))
        if use_dice:
            layers.append(Dice(name=f"{prefix}dice{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"{prefix}dropout{i}"))
    return layers


def mlp(units: Sequence[int], activation: str, dropout: float, name: str) -> keras.Sequential:
    """`dense_layers` as one Sequential named `name`: [batch, in] -> [batch, units[-1]]."""
    return keras.Sequential(dense_layers(units, activation, f"{name}_", dropout), name=name)


def masked_mean(values, mask, axis: int):
    """Mean of `values` [..., n, ..., dim] over `axis` where `mask` (bool, `values`' shape
    without the last axis) is True; 0 where no position is: [..., dim] without `axis`.
    (TF ops, in the order the models wrote them: the same graph, hence the same op seeds.)"""
    import tensorflow as tf

    weight = tf.cast(mask, values.dtype)[..., None]
    return tf.reduce_sum(values * weight, axis) / tf.maximum(tf.reduce_sum(weight, axis), 1.0)
