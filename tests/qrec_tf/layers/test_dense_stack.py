"""The shared Dense + activation stack builder and the masked mean, by hand."""

import keras
import numpy as np

from qrec_tf.layers.dense_stack import dense_layers, masked_mean, mlp
from qrec_tf.layers.dice import Dice


def test_dense_layers_names_kinds_and_order():
    layers = dense_layers([4, 2], "dice", "x_", dropout=0.5)
    assert [layer.name for layer in layers] == ["x_dense0", "x_dice0", "x_dropout0",
                                                "x_dense1", "x_dice1", "x_dropout1"]
    assert isinstance(layers[1], Dice) and layers[0].activation is keras.activations.linear
    relu = dense_layers([3], "relu")
    assert [layer.name for layer in relu] == ["dense0"]
    assert relu[0].activation is keras.activations.relu


def test_mlp_is_the_stack_as_one_sequential():
    net = mlp([3, 2], "relu", 0.0, "tower")
    assert net.name == "tower"
    assert [layer.name for layer in net.layers] == ["tower_dense0", "tower_dense1"]
    assert tuple(net(np.ones((5, 7), np.float32)).shape) == (5, 2)


def test_masked_mean_by_hand():
    values = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                       [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]], np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(masked_mean(values, mask, 1).numpy(), [[2.0, 3.0], [0.0, 0.0]])
