"""ExtractionLevel (PLE): gate-weighted experts by hand, gates summing to 1, which input each
gate and expert reads, serialization."""

import keras
import numpy as np
import pytest

from qrec_tf.layers.extraction import ExtractionLevel

X = np.array([[1.0, 2.0], [3.0, 0.5]], "float32")


def level(shared_output=True, **kwargs):
    layer = ExtractionLevel(2, 1, 1, [2], **kwargs, shared_output=shared_output)
    layer([X, X], X)
    return layer


def set_dense(dense, kernel, bias):
    dense.kernel.assign(np.asarray(kernel, "float32"))
    dense.bias.assign(np.asarray(bias, "float32"))


def test_outputs_by_hand():
    layer = level()
    set_dense(layer.task_expert_nets[0][0].layers[0], np.eye(2), [0, 0])            # relu(x)
    set_dense(layer.task_expert_nets[1][0].layers[0], 2 * np.eye(2), [0, 0])        # relu(2x)
    set_dense(layer.shared_expert_nets[0].layers[0], [[0, 1], [1, 0]], [0, 0])      # swap
    set_dense(layer.task_gates[0], np.zeros((2, 2)), [np.log(3.0), 0])              # [3/4, 1/4]
    set_dense(layer.task_gates[1], np.zeros((2, 2)), [0, 0])                        # [1/2, 1/2]
    set_dense(layer.shared_gate, np.zeros((2, 3)), [0, 0, 0])                       # 1/3 each
    (task0, task1), shared, gates = layer([X[:1], X[:1]], X[:1], return_gates=True)
    # x = [1, 2]: experts give task0 [1, 2], task1 [2, 4], shared [2, 1]
    np.testing.assert_allclose(task0.numpy(), [[0.75 * 1 + 0.25 * 2, 0.75 * 2 + 0.25 * 1]],
                               rtol=1e-6)
    np.testing.assert_allclose(task1.numpy(), [[0.5 * 2 + 0.5 * 2, 0.5 * 4 + 0.5 * 1]], rtol=1e-6)
    np.testing.assert_allclose(shared.numpy(), [[(1 + 2 + 2) / 3, (2 + 4 + 1) / 3]], rtol=1e-6)
    np.testing.assert_allclose(gates[0].numpy(), [[0.75, 0.25]], rtol=1e-6)


@pytest.mark.parametrize("task_experts, shared_experts", [(1, 1), (2, 3)])
def test_gates_sum_to_one_and_shapes(task_experts, shared_experts):
    keras.utils.set_random_seed(0)
    layer = ExtractionLevel(2, task_experts, shared_experts, [8, 4])
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    tasks, shared, gates = layer([x, 2 * x], -x, return_gates=True)
    assert [t.shape for t in tasks] == [(5, 4), (5, 4)] and shared.shape == (5, 4)
    assert [g.shape for g in gates] == [(5, task_experts + shared_experts)] * 2 + [
        (5, 2 * task_experts + shared_experts)]
    for gate in gates:
        assert (gate.numpy() > 0).all()
        np.testing.assert_allclose(gate.numpy().sum(axis=-1), np.ones(5), rtol=1e-5)


def test_each_task_reads_its_own_input_and_the_last_level_has_no_shared_output():
    keras.utils.set_random_seed(1)
    layer = level(shared_output=False, activation="tanh")
    assert layer.shared_gate is None
    (a0, a1), shared = layer([X, X], X)
    (b0, b1), _ = layer([X, X + 1.0], X)
    assert shared is None
    np.testing.assert_array_equal(a0.numpy(), b0.numpy())     # task 0 ignores task 1's input
    assert np.abs(a1.numpy() - b1.numpy()).max() > 1e-4
    (c0, _), _ = layer([X, X], X + 1.0)                        # the shared experts read it
    assert np.abs(a0.numpy() - c0.numpy()).max() > 1e-4
    with pytest.raises(ValueError, match="expected 2 task inputs"):
        layer([X], X)


def test_config_round_trip_and_serialization():
    layer = level(dropout=0.1, activation="tanh")
    expected = [t.numpy() for t in layer([X, X], X)[0]]
    config = layer.get_config()
    assert (config["units"], config["activation"], config["dropout"]) == ([2], "tanh", 0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, ExtractionLevel)
    restored([X, X], X)
    restored.set_weights(layer.get_weights())
    for got, want in zip(restored([X, X], X)[0], expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
