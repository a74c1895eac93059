"""The forward (noising) process q(x_t | x_0) of Ho et al. (2020).

`t` is an integer array of schedule indices (index t is the paper's step t+1) aligned to the
leading axes of the data: t of shape (B,) with x0 of shape (B, ...), or a scalar for one step.
Data results come back in the inputs' floating dtype; variances are float64, broadcast to the
data's shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from diffusion_core._inputs import align, as_data, as_step_index
from diffusion_core.schedule import DiffusionSchedule


class GaussianMoments(NamedTuple):
    """Mean (data dtype), variance and log-variance (float64), all of the data's shape."""

    mean: np.ndarray
    variance: np.ndarray
    log_variance: np.ndarray


def q_sample(schedule: DiffusionSchedule, x0: Any, t: Any, noise: Any) -> np.ndarray:
    """x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε, a draw of q(x_t | x0) for the caller's noise ε ~ N(0, I).

    x0, noise: arrays that broadcast, (B, ...); t: int array (B,) or scalar. Returns x_t in the
    inputs' dtype, of the broadcast shape.
    """
    (x0, noise), dtype = as_data(x0=x0, noise=noise)
    t, _ = align(as_step_index(t, schedule.num_timesteps), x0, noise)
    xt = schedule.sqrt_alphas_cumprod[t] * x0 + schedule.sqrt_one_minus_alphas_cumprod[t] * noise
    return xt.astype(dtype, copy=False)  # Ho et al. (2020) eq. 4 (reparameterised)


def q_mean_variance(schedule: DiffusionSchedule, x0: Any, t: Any) -> GaussianMoments:
    """The moments of q(x_t | x0) = N(√ᾱ_t·x0, (1-ᾱ_t)I). x0: (B, ...); t: (B,) or scalar."""
    (x0,), dtype = as_data(x0=x0)
    t, shape = align(as_step_index(t, schedule.num_timesteps), x0)
    mean = schedule.sqrt_alphas_cumprod[t] * x0  # Ho et al. (2020) eq. 4
    variance = schedule.sqrt_one_minus_alphas_cumprod[t] ** 2  # Ho et al. (2020) eq. 4: 1 - ᾱ_t
    return GaussianMoments(
        mean=np.broadcast_to(mean, shape).astype(dtype),
        variance=np.broadcast_to(variance, shape).astype(np.float64),
        log_variance=np.broadcast_to(np.log(variance), shape).astype(np.float64),
    )
