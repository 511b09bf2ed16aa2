"""Optimizers whose step cost follows the rows a batch touched, not the table sizes."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates only the touched rows of a variable with a sparse gradient.

    Keras 3's Adam turns a `tf.IndexedSlices` gradient dense (`gradient - m`), so every step
    touches every row of every embedding table (17x slower at 2M than at 10k rows here). For
    sparse gradients this applies Adam's update to the touched rows only: duplicate indices are
    summed, the rows of m, v and the variable are read with a resource gather and written back
    with a scatter. Rows that were not touched keep their moments (the "lazy" part, as in
    TF-Addons' LazyAdam); dense gradients get Keras' Adam unchanged.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdam does not support amsgrad")

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        indices, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(
            tf.cast(gradient.values, dtype), positions, tf.shape(indices)[0])
        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m_rows = tf.gather(m.value, indices)
        v_rows = tf.gather(v.value, indices)
        m_rows = m_rows + (values - m_rows) * (1 - beta_1)
        v_rows = v_rows + (tf.square(values) - v_rows) * (1 - beta_2)
        self.assign(m, tf.IndexedSlices(m_rows, indices))
        self.assign(v, tf.IndexedSlices(v_rows, indices))
        self.assign_sub(variable, tf.IndexedSlices(
            m_rows * alpha / (tf.sqrt(v_rows) + self.epsilon), indices))


@keras.saving.register_keras_serializable(package="qrec_tf")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam with the dense update in one fused kernel (tf.raw_ops.ResourceApplyAdam).

    Keras 3's Adam updates a dense variable with about ten separate element-wise ops, each a
    pass over the variable, m and v; for the diffusion denoiser's [40,010, 256] first layer that
    was most of the optimizer's time (docs/RESULTS.md, "Training step throughput"). The fused
    kernel reads and writes each element once. Same arithmetic as Keras' Adam:
    m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
    var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps). Sparse gradients, amsgrad and
    non-float32 variables take Keras' own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if (isinstance(gradient, tf.IndexedSlices) or self.amsgrad
                or variable.dtype != "float32"):
            return super().update_step(gradient, variable, learning_rate)
        step = tf.cast(self.iterations + 1, tf.float32)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, tf.float32), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, tf.float32), step),
            lr=tf.cast(learning_rate, tf.float32), beta1=tf.cast(self.beta_1, tf.float32),
            beta2=tf.cast(self.beta_2, tf.float32), epsilon=tf.cast(self.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32))


OPTIMIZERS = {"lazy_adam": LazyAdam, "adam": keras.optimizers.Adam,
              "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD}


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate=learning_rate)
