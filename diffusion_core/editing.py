"""The math of editing with a trained model: DDIM inversion, spherical interpolation of latents,
and the forward jump q(x_t | x_s) that RePaint-style resampling uses.

* DDIM inversion (Song et al. 2021 §4.3, "the ODE run forward"; Mokady et al. 2023 eq. 3 for its
  use on real images): on ascending indices τ_0 < ... < τ_{K-1}, the clean image is taken as
  x_{τ_0} and each step moves it one index up with the DDIM η = 0 update written for t → next:
  x_{τ_{k+1}} = √ᾱ_{τ_{k+1}}·x̂0 + √(1-ᾱ_{τ_{k+1}})·ε̂, with x̂0 and ε̂ predicted at (x_{τ_k}, τ_k).
  `ddim_inversion_coefficients` returns those K-1 steps as `ReverseCoefficients` (A = √ᾱ_next,
  B = √(1-ᾱ_next), σ = 0), so the samplers' one loop runs them; decoding is
  `ddim_coefficients` on the same τ.
* `slerp` (Shoemake 1985): interpolation along the great circle between two latents; for
  Gaussian latents in high dimension it keeps the norm (≈ √D) that a straight line loses.
* `q_jump_mean_variance`: q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s)·x_s, (1 - ᾱ_t/ᾱ_s)·I) for s < t (s = -1:
  x_s = x0, ᾱ_{-1} = 1), the forward process over several steps at once (Ho et al. 2020 eq. 4
  generalised; RePaint, Lugmayr et al. 2022 Algorithm 1, resamples with it).
Indices follow the package convention (index t is the paper's step t+1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_core._inputs import as_data, as_step_sequence
from diffusion_core.forward import GaussianMoments
from diffusion_core.reverse import ReverseCoefficients
from diffusion_core.schedule import DiffusionSchedule


def ddim_inversion_coefficients(schedule: DiffusionSchedule, timesteps: Any = None) -> ReverseCoefficients:
    """The K-1 steps of DDIM inversion up the ascending indices ``timesteps`` (None = all T),
    in running order: step k takes x at τ_k (the network is told τ_k) to x at τ_{k+1}."""
    T = schedule.num_timesteps
    tau = np.arange(T, dtype=np.int64) if timesteps is None else as_step_sequence(timesteps, T)
    if len(tau) < 2:
        raise ValueError("DDIM inversion needs at least 2 timesteps (it moves from one to the next)")
    here, nxt = tau[:-1], tau[1:]
    return ReverseCoefficients(
        timesteps=here,
        sqrt_alphas_cumprod=schedule.sqrt_alphas_cumprod[here],
        sqrt_one_minus_alphas_cumprod=schedule.sqrt_one_minus_alphas_cumprod[here],
        x0_coef=schedule.sqrt_alphas_cumprod[nxt],  # DDIM eq. 12 with t → next, η = 0
        eps_coef=schedule.sqrt_one_minus_alphas_cumprod[nxt],
        sigma=np.zeros(len(here)),
    )


def slerp(a: Any, b: Any, t: Any) -> np.ndarray:
    """Spherical interpolation between latents a and b (same shape (B, ...) or (...)), at
    fractions t (scalar, or (F,) for F frames, giving (F, *a.shape)): each batch row is one
    vector. sin((1-t)θ)/sin θ·a + sin(tθ)/sin θ·b with θ the angle between the rows; where
    θ < 1e-6 (parallel rows) the straight line, which slerp then equals to ~θ²."""
    (a, b), dtype = as_data(a=a, b=b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    t_arr = np.asarray(t, dtype=np.float64)
    if t_arr.ndim > 1 or not np.all(np.isfinite(t_arr)):
        raise ValueError("t must be a finite scalar or a 1-D array of fractions")
    flat = a.ndim > 1
    a2 = a.reshape(a.shape[0], -1) if flat else a.reshape(1, -1)
    b2 = b.reshape(b.shape[0], -1) if flat else b.reshape(1, -1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    if np.any(norms == 0):
        raise ValueError("slerp needs non-zero end points (the angle to a zero vector is undefined)")
    theta = np.arccos(np.clip(np.sum(a2 * b2, axis=1) / norms, -1.0, 1.0))[:, None]  # (B, 1)
    ts = np.atleast_1d(t_arr)[:, None, None]  # (F, 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        wa = np.where(theta < 1e-6, 1.0 - ts, np.sin((1.0 - ts) * theta) / np.sin(theta))
        wb = np.where(theta < 1e-6, ts, np.sin(ts * theta) / np.sin(theta))
    out = (wa * a2 + wb * b2).reshape((len(ts), *a.shape))
    return (out if t_arr.ndim else out[0]).astype(dtype)


def q_jump_mean_variance(schedule: DiffusionSchedule, x_s: Any, s: int, t: int) -> GaussianMoments:
    """Moments of q(x_t | x_s) for -1 <= s < t <= T-1 (s = -1: x_s is x0): mean √(ᾱ_t/ᾱ_s)·x_s
    (x_s's dtype), variance 1 - ᾱ_t/ᾱ_s and its log (float64, x_s's shape)."""
    T = schedule.num_timesteps
    if not (isinstance(s, int | np.integer) and isinstance(t, int | np.integer) and -1 <= s < t < T):
        raise ValueError(f"need integers -1 <= s < t <= {T - 1}, got s = {s!r}, t = {t!r}")
    (x_s,), dtype = as_data(x_s=x_s)
    with np.errstate(divide="ignore"):  # β = 1 (zero terminal SNR) gives log α = -inf: ratio 0
        log_ratio = np.sum(np.log1p(-schedule.betas[s + 1: t + 1]))  # log ᾱ_t/ᾱ_s = Σ log α_u
    variance = -np.expm1(log_ratio)  # 1 - ᾱ_t/ᾱ_s to full relative precision for short jumps
    return GaussianMoments(
        mean=(np.exp(0.5 * log_ratio) * x_s).astype(dtype),
        variance=np.full(x_s.shape, variance, dtype=np.float64),
        log_variance=np.full(x_s.shape, np.log(variance), dtype=np.float64))
