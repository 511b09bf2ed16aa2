"""InstrumentalDecomposition (IV4Rec+): stage-1 fit, causal / non-causal parts, gate, the
first-stage loss by hand, rows without instruments, no gradient into the treatment."""

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.layers.instrumental import InstrumentalDecomposition

TREATMENT = np.array([[1.0, 2.0], [4.0, -1.0], [0.5, 0.5]], "float32")
INSTRUMENT = np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 3.0]], "float32")
HAS = np.array([True, True, False])


def layer():
    decomposition = InstrumentalDecomposition(2, units=[])   # stage 1: one linear Dense
    decomposition(TREATMENT, INSTRUMENT, HAS)
    fit, gate = decomposition.stage1.layers[0], decomposition.gate
    fit.kernel.assign(np.eye(2, dtype="float32"))
    fit.bias.assign(np.zeros(2, "float32"))
    gate.kernel.assign(np.zeros((4, 1), "float32"))          # w = sigmoid(0) = 1/2
    gate.bias.assign(np.zeros(1, "float32"))
    return decomposition


def test_parts_output_and_loss_by_hand():
    out = {k: v.numpy() for k, v in layer()(TREATMENT, INSTRUMENT, HAS).items()}
    np.testing.assert_allclose(out["causal"], INSTRUMENT)                  # identity fit
    np.testing.assert_allclose(out["non_causal"], TREATMENT - INSTRUMENT)
    np.testing.assert_allclose(out["gate"], [0.5, 0.5, 0.0])                # no instruments: 0
    np.testing.assert_allclose(out["output"], [[1.0, 1.5], [3.0, -0.5], [0.5, 0.5]])
    # row 0: ((1-1)^2 + (1-2)^2) / 2 = 0.5; row 1: ((2-4)^2 + (0+1)^2) / 2 = 2.5; row 2 left out
    np.testing.assert_allclose(out["first_stage_loss"], (0.5 + 2.5) / 2, rtol=1e-6)
    none = layer()(TREATMENT, INSTRUMENT, np.zeros(3, bool))
    np.testing.assert_allclose(none["output"].numpy(), TREATMENT)
    assert float(none["first_stage_loss"]) == 0.0


def test_the_first_stage_loss_moves_stage_one_but_not_the_treatment():
    decomposition = layer()
    treatment = tf.Variable(TREATMENT)
    with tf.GradientTape() as tape:
        loss = decomposition(treatment, INSTRUMENT, HAS)["first_stage_loss"]
    grads = tape.gradient(loss, [treatment, *decomposition.stage1.trainable_variables])
    assert grads[0] is None or not np.any(grads[0])
    assert np.abs(grads[1].numpy()).max() > 0


def test_stage_one_learns_to_fit_the_treatment():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    instrument = rng.normal(size=(64, 3)).astype("float32")
    treatment = instrument @ rng.normal(size=(3, 2)).astype("float32")   # linear in the IVs
    decomposition = InstrumentalDecomposition(2, units=[8])
    optimizer = keras.optimizers.Adam(0.05)
    has = np.ones(64, bool)
    losses = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = decomposition(treatment, instrument, has)["first_stage_loss"]
        stage1 = decomposition.stage1.trainable_variables   # the loss does not reach the gate
        optimizer.apply_gradients(zip(tape.gradient(loss, stage1), stage1))
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]


def test_config_round_trip_and_serialization():
    keras.utils.set_random_seed(0)
    original = InstrumentalDecomposition(2, units=[3])
    expected = original(TREATMENT, INSTRUMENT, HAS)["output"].numpy()
    assert original.get_config()["units"] == [3]
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(original))
    restored(TREATMENT, INSTRUMENT, HAS)
    restored.set_weights(original.get_weights())
    np.testing.assert_allclose(restored(TREATMENT, INSTRUMENT, HAS)["output"].numpy(), expected,
                               rtol=1e-6)
