"""Gaussian diffusion over query-item vectors (DDPM with x_0 prediction, as in DiffRec, Wang et al.
SIGIR 2023; docs/PAPER.md "Diffusion augmentation").

Notation (steps t = 0 .. T-1, as in DiffRec's code):
  alpha_t = 1 - beta_t,  abar_t = prod_{s <= t} alpha_s,  abar_{-1} = 1
  forward:   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                                  (eq 8)
  posterior: q(x_{t-1} | x_t, x_0) has mean  c1_t x_0 + c2_t x_t  with
             c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
             c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
  training:  || x0_hat(x_t, t) - x_0 ||^2 (eq 12), optionally weighted by
             SNR(t-1) - SNR(t) with SNR(t) = abar_t / (1 - abar_t) (weight 1 at t = 0)
  inference: DiffRec's deterministic reverse process: x_T' = x (or x noised to step
             `sampling_steps - 1`), then for t = T-1 .. 0: x_{t-1} = c1_t x0_hat(x_t, t) + c2_t x_t.
             At t = 0, c1 = 1 and c2 = 0, so the result is the last x_0 prediction.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf

SCHEDULES = ("linear", "linear-var", "cosine")
MAX_BETA = 0.999
FIRST_BETA = 1e-5   # DiffRec (after Sohl-Dickstein et al. 2.4.1): a tiny first variance


def beta_schedule(schedule: str, steps: int, noise_scale: float = 0.1, noise_min: float = 1e-4,
                  noise_max: float = 0.02, fix_first_beta: bool = True) -> np.ndarray:
    """float64 [steps] betas.

    - "linear": beta_t evenly spaced from noise_scale * noise_min to noise_scale * noise_max.
    - "linear-var" (DiffRec's get_betas): the *variance* 1 - abar_t is evenly spaced over that
      range, so beta_0 = v_0 and beta_t = 1 - (1 - v_t) / (1 - v_{t-1}).
    - "cosine" (Nichol & Dhariwal): abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2 on s in [0, 1],
      beta_t = 1 - abar((t + 1) / T) / abar(t / T); noise_* are not used.
    Every beta is capped at 0.999; with fix_first_beta, beta_0 = 1e-5 as in DiffRec.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; known: {list(SCHEDULES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule in ("linear", "linear-var"):
        if not (noise_scale > 0 and 0 < noise_min <= noise_max and noise_scale * noise_max < 1):
            raise ValueError("need noise_scale > 0, 0 < noise_min <= noise_max and "
                             f"noise_scale * noise_max < 1 (got {noise_scale}, {noise_min}, "
                             f"{noise_max})")
        spaced = np.linspace(noise_scale * noise_min, noise_scale * noise_max, steps,
                             dtype=np.float64)
        if schedule == "linear":
            betas = spaced
        else:
            remaining = 1.0 - spaced                                    # abar_t
            betas = np.concatenate([spaced[:1], 1.0 - remaining[1:] / remaining[:-1]])
    else:
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([1.0 - abar((t + 1) / steps) / abar(t / steps) for t in range(steps)])
    betas = np.minimum(betas, MAX_BETA)
    if fix_first_beta:
        betas[0] = FIRST_BETA
    return betas


@keras.saving.register_keras_serializable(package="qrec_tf")
class GaussianDiffusion(keras.layers.Layer):
    """The diffusion process around a denoiser that predicts x_0 (e.g. `layers.Denoiser`).

    Call (inference): x float [batch, items] -> the denoised x float [batch, items]
    (`denoise`). Training uses `training_loss`; `q_sample` is the forward process.

    Args:
      denoiser: a layer called as denoiser(x_t [batch, items], t int [batch], training).
      steps: T, the number of diffusion steps.
      schedule, noise_scale, noise_min, noise_max, fix_first_beta: see `beta_schedule`.
      reweight: weight each example's MSE by SNR(t-1) - SNR(t) (DiffRec's `reweight`).
      sampling_steps: the step x is noised to before denoising at inference; 0 (DiffRec's
        default) denoises the clean x.
      seed: seeds the inference noise when sampling_steps > 0 and no noise is passed.
    """

    def __init__(self, denoiser: keras.layers.Layer, steps: int = 5,
                 schedule: str = "linear-var", noise_scale: float = 0.1, noise_min: float = 1e-4,
                 noise_max: float = 0.02, fix_first_beta: bool = True, reweight: bool = True,
                 sampling_steps: int = 0, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= sampling_steps <= steps:
            raise ValueError(f"sampling_steps must be in [0, steps={steps}], got {sampling_steps}")
        self.denoiser = denoiser
        self.steps, self.schedule = steps, schedule
        self.noise_scale, self.noise_min, self.noise_max = noise_scale, noise_min, noise_max
        self.fix_first_beta, self.reweight = fix_first_beta, reweight
        self.sampling_steps, self.seed = sampling_steps, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        self.betas = beta_schedule(schedule, steps, noise_scale, noise_min, noise_max,
                                   fix_first_beta)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        self.posterior_mean_coef1 = (self.betas * np.sqrt(self.alphas_cumprod_prev)
                                     / (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas)
                                     / (1.0 - self.alphas_cumprod))
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        self.loss_weights = np.concatenate([[1.0], self.snr[:-1] - self.snr[1:]])

    def build(self, x_shape: tuple) -> None:
        if not self.denoiser.built:  # one call builds any denoiser, whatever its build() takes
            self.denoiser(ops.zeros((1, x_shape[-1])), ops.zeros((1,), "int32"))

    @staticmethod
    def _at(values: np.ndarray, timesteps: tf.Tensor) -> tf.Tensor:
        """values[t] as float32 [batch, 1], to broadcast over the item axis."""
        return ops.take(ops.convert_to_tensor(values, "float32"), timesteps)[:, None]

    def q_sample(self, x_0: tf.Tensor, timesteps: tf.Tensor, noise: tf.Tensor | None = None
                 ) -> tf.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise; x_0, noise [batch, items],
        timesteps int [batch] -> [batch, items]. noise defaults to a standard normal draw."""
        if noise is None:
            noise = keras.random.normal(ops.shape(x_0), seed=self.seed_generator)
        return (self._at(np.sqrt(self.alphas_cumprod), timesteps) * x_0
                + self._at(np.sqrt(1.0 - self.alphas_cumprod), timesteps) * noise)

    def training_loss(self, x_input: tf.Tensor, x_target: tf.Tensor, timesteps: tf.Tensor,
             noise: tf.Tensor, training: bool | None = True) -> tf.Tensor:
        """Per-example (weighted) MSE of the x_0 prediction.

        The forward process starts from x_input and the prediction is compared with x_target;
        they differ when positives are masked out of the input (the model learns to fill them in).

        Args: x_input, x_target, noise float [batch, items]; timesteps int [batch].
        Returns: float [batch].
        """
        x_t = self.q_sample(x_input, timesteps, noise)
        predicted = self.denoiser(x_t, timesteps, training=training)
        mse = ops.mean(ops.square(x_target - predicted), axis=-1)
        if self.reweight:
            mse = mse * self._at(self.loss_weights, timesteps)[:, 0]
        return mse

    def denoise(self, x: tf.Tensor, noise: tf.Tensor | None = None) -> tf.Tensor:
        """DiffRec's deterministic reverse process (no sampling noise): [batch, items] ->
        [batch, items]. `noise` [batch, items] is used only when sampling_steps > 0."""
        batch = ops.shape(x)[0]
        if self.sampling_steps > 0:
            x = self.q_sample(x, ops.full((batch,), self.sampling_steps - 1, "int32"), noise)
        coef1 = ops.convert_to_tensor(self.posterior_mean_coef1, "float32")
        coef2 = ops.convert_to_tensor(self.posterior_mean_coef2, "float32")

        def reverse_step(i, x_t):
            t = self.steps - 1 - i
            predicted = self.denoiser(x_t, ops.full((batch,), t, "int32"), training=False)
            return coef1[t] * predicted + coef2[t] * x_t

        return ops.fori_loop(0, self.steps, reverse_step, x)

    def call(self, x: tf.Tensor, noise: tf.Tensor | None = None) -> tf.Tensor:
        return self.denoise(x, noise)

    def get_config(self) -> dict:
        return {**super().get_config(),
                "denoiser": keras.saving.serialize_keras_object(self.denoiser),
                "steps": self.steps, "schedule": self.schedule, "noise_scale": self.noise_scale,
                "noise_min": self.noise_min, "noise_max": self.noise_max,
                "fix_first_beta": self.fix_first_beta, "reweight": self.reweight,
                "sampling_steps": self.sampling_steps, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict) -> "GaussianDiffusion":
        config = dict(config)
        config["denoiser"] = keras.saving.deserialize_keras_object(config["denoiser"])
        return cls(**config)
