"""Conversions between the three things a network may predict: x0, ε and v.

With x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε (Ho et al. 2020 eq. 4) and v = √ᾱ_t·ε - √(1-ᾱ_t)·x0
(Salimans & Ho 2022 §4), each of x0, ε, v follows from x_t and any one other.
All functions take (schedule, data, t, data): data arrays that broadcast, (B, ...), t an int
array (B,) or scalar (index t is the paper's step t+1); they return the inputs' floating dtype.

Zero terminal SNR: where ᾱ_t = 0, x_t = ε carries no information on x0, so
`predict_x0_from_eps` raises ValueError there (predict v instead); the others stay finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_core._inputs import align, as_data, as_step_index
from diffusion_core.schedule import DiffusionSchedule


def _aligned_t(schedule: DiffusionSchedule, t: Any, *arrays: np.ndarray) -> np.ndarray:
    """Checked t, shaped to index the leading axes of `arrays`."""
    t, _ = align(as_step_index(t, schedule.num_timesteps), *arrays)
    return t


def predict_x0_from_eps(
    schedule: DiffusionSchedule, xt: Any, t: Any, eps: Any
) -> np.ndarray:
    """x0 = x_t/√ᾱ_t - √(1/ᾱ_t - 1)·ε. ValueError at a step with ᾱ_t = 0 (use v there)."""
    (xt, eps), dtype = as_data(xt=xt, eps=eps)
    t = _aligned_t(schedule, t, xt, eps)
    if np.any(schedule.alphas_cumprod[t] == 0):
        raise ValueError("x0 cannot be recovered from eps at a step with alphas_cumprod = 0 "
                         "(zero terminal SNR); use the v objective there")
    x0 = (schedule.sqrt_recip_alphas_cumprod[t] * xt
          - schedule.sqrt_recipm1_alphas_cumprod[t] * eps)  # Ho et al. (2020) eq. 4 solved for x0
    return x0.astype(dtype, copy=False)


def predict_eps_from_x0(
    schedule: DiffusionSchedule, xt: Any, t: Any, x0: Any
) -> np.ndarray:
    """ε = (x_t - √ᾱ_t·x0)/√(1-ᾱ_t) (finite at every step: 1 - ᾱ_t > 0)."""
    (xt, x0), dtype = as_data(xt=xt, x0=x0)
    t = _aligned_t(schedule, t, xt, x0)
    eps = ((xt - schedule.sqrt_alphas_cumprod[t] * x0)
           / schedule.sqrt_one_minus_alphas_cumprod[t])  # Ho et al. (2020) eq. 4 solved for ε
    return eps.astype(dtype, copy=False)


def v_target(schedule: DiffusionSchedule, x0: Any, t: Any, noise: Any) -> np.ndarray:
    """v = √ᾱ_t·ε - √(1-ᾱ_t)·x0 for the noise ε that made x_t (Salimans & Ho 2022 §4)."""
    (x0, noise), dtype = as_data(x0=x0, noise=noise)
    t = _aligned_t(schedule, t, x0, noise)
    v = (schedule.sqrt_alphas_cumprod[t] * noise
         - schedule.sqrt_one_minus_alphas_cumprod[t] * x0)  # Salimans & Ho (2022) §4
    return v.astype(dtype, copy=False)


def predict_x0_from_v(schedule: DiffusionSchedule, xt: Any, t: Any, v: Any) -> np.ndarray:
    """x0 = √ᾱ_t·x_t - √(1-ᾱ_t)·v (Salimans & Ho 2022 §4)."""
    (xt, v), dtype = as_data(xt=xt, v=v)
    t = _aligned_t(schedule, t, xt, v)
    x0 = (schedule.sqrt_alphas_cumprod[t] * xt
          - schedule.sqrt_one_minus_alphas_cumprod[t] * v)  # Salimans & Ho (2022) §4
    return x0.astype(dtype, copy=False)


def predict_eps_from_v(schedule: DiffusionSchedule, xt: Any, t: Any, v: Any) -> np.ndarray:
    """ε = √(1-ᾱ_t)·x_t + √ᾱ_t·v (Salimans & Ho 2022 §4)."""
    (xt, v), dtype = as_data(xt=xt, v=v)
    t = _aligned_t(schedule, t, xt, v)
    eps = (schedule.sqrt_one_minus_alphas_cumprod[t] * xt
           + schedule.sqrt_alphas_cumprod[t] * v)  # Salimans & Ho (2022) §4
    return eps.astype(dtype, copy=False)
