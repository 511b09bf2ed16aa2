"""One extraction level of PLE: task-specific and shared experts mixed by gates (Tang et al.,
"Progressive Layered Extraction (PLE)", RecSys 2020, sec. 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import keras
from keras import ops

from qrec_tf.layers.dense_stack import mlp

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class ExtractionLevel(keras.layers.Layer):
    """Customized gate control (CGC) of one PLE level.

    Every expert is a stack of Dense(units, activation) layers (each followed by dropout). Task k
    has `task_experts` experts of its own, which read task k's input; the `shared_experts` read the
    shared input. Task k's gate is softmax(Dense(task k's input)) over [task k's experts, shared
    experts], and task k's output is the gate-weighted sum of those experts' outputs (PLE eqs 1-3).
    Every level but the last (`shared_output=True`) also has a shared gate, softmax(Dense(shared
    input)) over all experts (every task's and the shared ones), whose weighted sum is the shared
    input of the next level (PLE eq 4). A single level with `shared_output=False` is a CGC.

    Call: task_inputs, a list of `num_tasks` tensors [batch, in_dim] (the first level gets the same
    tensor for every task and as shared_input), shared_input [batch, in_dim] ->
    (task outputs: list of `num_tasks` tensors [batch, units[-1]], shared output [batch,
    units[-1]] or None). With return_gates=True a third element holds the gate weights: a list of
    `num_tasks` tensors [batch, task_experts + shared_experts] (task k's experts first), plus the
    shared gate's [batch, num_tasks * task_experts + shared_experts] (task 0's experts, task 1's,
    ..., then the shared ones) when `shared_output`; each row sums to 1.
    """

    def __init__(self, num_tasks: int, task_experts: int, shared_experts: int,
                 units: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 shared_output: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if min(num_tasks, task_experts, shared_experts) < 1 or not units:
            raise ValueError("ExtractionLevel needs >= 1 task, >= 1 expert of each kind and units")
        self.num_tasks = num_tasks
        self.task_experts, self.shared_experts = task_experts, shared_experts
        self.units = [int(u) for u in units]
        self.activation, self.dropout, self.shared_output = activation, dropout, shared_output
        self.task_expert_nets = [[self._expert(f"task{k}_expert{i}") for i in range(task_experts)]
                                 for k in range(num_tasks)]
        self.shared_expert_nets = [self._expert(f"shared_expert{i}")
                                   for i in range(shared_experts)]
        self.task_gates = [keras.layers.Dense(task_experts + shared_experts, activation="softmax",
                                              name=f"task{k}_gate") for k in range(num_tasks)]
        self.shared_gate = (keras.layers.Dense(num_tasks * task_experts + shared_experts,
                                               activation="softmax", name="shared_gate")
                            if shared_output else None)

    def _expert(self, name: str) -> keras.Sequential:
        return mlp(self.units, self.activation, self.dropout, name)

    def build(self, task_inputs_shape: Sequence[tuple], shared_input_shape: tuple | None = None
              ) -> None:
        shared_input_shape = shared_input_shape or task_inputs_shape[0]
        for k in range(self.num_tasks):
            for expert in self.task_expert_nets[k]:
                expert.build(task_inputs_shape[k])
            self.task_gates[k].build(task_inputs_shape[k])
        for expert in self.shared_expert_nets:
            expert.build(shared_input_shape)
        if self.shared_gate is not None:
            self.shared_gate.build(shared_input_shape)

    def call(self, task_inputs: Sequence[tf.Tensor], shared_input: tf.Tensor,
             training: bool | None = None, return_gates: bool = False):
        if len(task_inputs) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} task inputs, got {len(task_inputs)}")
        shared = [expert(shared_input, training=training) for expert in self.shared_expert_nets]
        task_outputs, per_task, gates = [], [], []
        for k, x in enumerate(task_inputs):
            own = [expert(x, training=training) for expert in self.task_expert_nets[k]]
            per_task.append(own)
            gate = self.task_gates[k](x)                                   # [batch, n_k]
            task_outputs.append(self._mix(gate, own + shared))
            gates.append(gate)
        shared_output = None
        if self.shared_gate is not None:
            gate = self.shared_gate(shared_input)
            shared_output = self._mix(gate, [e for own in per_task for e in own] + shared)
            gates.append(gate)
        return (task_outputs, shared_output, gates) if return_gates else (task_outputs,
                                                                           shared_output)

    @staticmethod
    def _mix(gate: tf.Tensor, experts: list[tf.Tensor]) -> tf.Tensor:
        """sum_e gate[:, e] * experts[e]: [batch, n] with n x [batch, units] -> [batch, units]."""
        stacked = ops.stack(experts, axis=1)                               # [batch, n, units]
        return ops.sum(ops.expand_dims(ops.cast(gate, stacked.dtype), -1) * stacked, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_tasks": self.num_tasks,
                "task_experts": self.task_experts, "shared_experts": self.shared_experts,
                "units": list(self.units), "activation": self.activation,
                "dropout": self.dropout, "shared_output": self.shared_output}
