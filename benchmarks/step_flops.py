"""FLOPs of a DIN training step, counted from its layers' matmuls, and this machine's matmul
throughput: what `benchmarks.peers` and `benchmarks.peers_profile` compare a step's time with.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np


def dense_flops(rows: int, fan_in: int, units: int) -> int:
    """A Dense layer's matmul on `rows` rows: 2 * rows * fan_in * units (a multiply and an add
    per weight and row; bias and activation are element-wise, not counted)."""
    return 2 * rows * fan_in * units


@dataclasses.dataclass(frozen=True)
class DinShape:
    """What a DIN step's FLOPs depend on. item_dim: the item representation e (item, category,
    subcategory embeddings: 3 * embedding_dim); mlp_input: the CTR MLP's input width;
    scored_history: the history positions the attention's MLP scores per example (the history
    length when every position is scored, DeepCTR's and `DINAttention(packed=False)`; the mean
    real length when only the real ones are, `DINAttention(packed=True)`; None: the length)."""

    batch: int
    history: int
    item_dim: int
    attention_units: tuple[int, ...]
    mlp_units: tuple[int, ...]
    mlp_input: int
    scored_history: float | None = None

    @property
    def scored_rows(self) -> int:
        """The rows of the attention MLP's matmuls in one step."""
        return round(self.batch * (self.history if self.scored_history is None
                                   else self.scored_history))


def din_step_flops(shape: DinShape, blockwise: bool = True) -> int:
    """FLOPs of one training step of a DIN: 3 x the forward's matmul FLOPs (the backward pass
    computes the gradients of both the inputs and the weights: two matmuls per forward one).

    Forward per example, e = item_dim, H = history, S = scored_history (H, or the mean real
    length when only the real positions are scored), u_1..u_k the attention units:
      attention, first layer: blockwise (ours, `DINAttention._key_part/_query_part`):
        S * (2 e u_1 [k (W_k - W_d)] + 2 e u_1 [(q * k) W_p]) + 2 e u_1 [q (W_q + W_d), per row];
        else (DeepCTR): S * 2 (4e) u_1 on the concatenation [q, k, q - k, q * k]
      attention, further layers and the score: S * sum_i 2 u_i u_(i+1), with u_(k+1) = 1
      weighted sum of the keys: 2 H e (over every position in both)
      CTR MLP: sum_i 2 m_i m_(i+1), m_0 = mlp_input, then the logit (m_last -> 1).
    """
    matmuls = sum(dense_flops(*m) for m in din_matmuls(shape, blockwise))
    return 3 * (matmuls + shape.batch * 2 * shape.history * shape.item_dim)


def din_matmuls(shape: DinShape, blockwise: bool = True) -> list[tuple[int, int, int]]:
    """The forward's Dense matmuls of a DIN step as (rows, fan_in, units), as `din_step_flops`
    counts them (the keys' weighted sum, a batched [1, H] x [H, e] per example, apart)."""
    b, rows, e = shape.batch, shape.scored_rows, shape.item_dim
    units = list(shape.attention_units)
    first = ([(rows, e, units[0])] * 2 + [(b, e, units[0])] if blockwise
             else [(rows, 4 * e, units[0])])
    widths = units + [1]
    mlp = [shape.mlp_input, *shape.mlp_units, 1]
    return (first + [(rows, a, c) for a, c in zip(widths, widths[1:])]
            + [(b, a, c) for a, c in zip(mlp, mlp[1:])])


def din_shape(config_model, schema, batch: int, real_history: float | None = None,
              packed: bool | None = None) -> DinShape:
    """The DinShape of our din (or of DeepCTR's DIN on the same features, `packed=False`): the
    MLP reads the user-group and author embeddings, the target representation and the pooled
    history. real_history: the mean real history length of the data; the attention scores that
    many positions per example when it is packed (default: packed, as the model's
    attention runs: `DINAttention(packed=True)`)."""
    d = config_model.embedding_dim
    others = len(schema.group("user")) + len(schema.group("item")) - 3
    packed = True if packed is None else packed
    return DinShape(batch, schema.history_length, 3 * d, tuple(config_model.attention_units),
                    tuple(config_model.mlp_units), others * d + 2 * 3 * d,
                    real_history if packed else None)


def mean_history_length(history_ids: np.ndarray, padding: int) -> float:
    """The mean count of real positions per row of a [rows, history] id matrix."""
    return float(np.mean(np.sum(np.asarray(history_ids) != padding, axis=1)))


def matmul_gflops(m: int = 1024, k: int = 1024, n: int = 1024, repeats: int = 10) -> float:
    """This machine's float32 matmul throughput, GFLOP/s: median over `repeats` of [m, k] x [k, n]
    (2 m k n FLOPs each) inside a tf.function, after a warm-up call."""
    import tensorflow as tf

    a = tf.random.normal([m, k])
    b = tf.random.normal([k, n])
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(matmul(a, b))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        float(matmul(a, b))
        times.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(times) / 1e9
