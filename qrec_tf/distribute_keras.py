"""Keras 3.15 workarounds for training under several replicas, beside the distribution code
(qrec_tf.distribute): `CTRModel` inherits them.

Keras 3's `fit` fails with several replicas in sync (keras-team/keras#20585, open;
tensorflow/tensorflow#72388): (1) under any strategy with 2+ replicas, (2) under a
MultiWorkerMirroredStrategy of 2+ workers; elsewhere Keras' own code runs. Tested by
tests/qrec_tf/test_distribute.py (the 2-replica and the 2-process runs fail without them):
delete this module once Keras fixes these.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class ReplicaWorkarounds(keras.Model):
    """A keras.Model whose `fit` runs under several replicas and several workers."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """(1) Keras takes a first batch from the epoch's iterator and reduces it to a mean over
        the replicas to build the model symbolically, which fails on string features (`AddN` of
        string / `Attempt to convert a value (PerReplica ...)`). `registry.build_model` has
        built the model on a sample batch already: only the optimizer's variables are left."""
        if self.distribute_strategy.num_replicas_in_sync == 1:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
        self._post_build()

    def make_train_function(self, force=False):
        self._logs_as_vectors_under_multi_worker()
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._logs_as_vectors_under_multi_worker()
        return super().make_test_function(force=force)

    def _logs_as_vectors_under_multi_worker(self):
        """(2) Keras reduces the step's logs across workers with `strategy.reduce("MEAN", v,
        axis=0)`, which fails on scalars (`Invalid reduction dimension 0 for input with 0
        dimensions`): each log goes out as shape [1] and comes back a scalar (the mean over the
        replicas)."""
        from qrec_tf.distribute import in_multi_worker_mode

        if in_multi_worker_mode(self.distribute_strategy) and "train_step" not in vars(self):
            self.train_step = _logs_as_vectors(self.train_step)
            self.test_step = _logs_as_vectors(self.test_step)


def _logs_as_vectors(step):
    """A train or test step whose scalar logs are returned with shape [1] (workaround (2))."""
    def wrapped(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    return wrapped
