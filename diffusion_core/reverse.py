"""Reverse-process steps (DDPM ancestral, DDIM) as coefficient tables plus one reference step.

Every sampler here is the same update, run for k = 0..K-1 in sampling order (k = 0 noisiest):

    x̂0     = x0_from_xt_coef·x_t + x0_from_output_coef·model_output   (then clipped to [-1, 1])
    ε̂      = (x_t - √ᾱ_t·x̂0)/√(1-ᾱ_t)
    x_prev = A_k·x̂0 + B_k·ε̂ + σ_k·z

The samplers differ only in the tables A (`x0_coef`), B (`eps_coef`) and σ (`sigma`), computed
once in float64 by `ddpm_coefficients` / `ddim_coefficients` on the process respaced to the chosen
indices τ (all T steps by default). Here ᾱ_t = ᾱ_{τ_k} and ᾱ_prev = ᾱ_{τ_{k+1}} in sampling order,
i.e. the ᾱ of the next entry of the step list (ᾱ_prev = 1 at the last step), never t - T//K.
Indices are the package convention: index t is the paper's step t+1. The core draws no random
numbers: the caller passes z.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from diffusion_core._inputs import (
    as_choice,
    as_data,
    as_real,
    as_step_sequence,
    broadcast_data,
    read_only,
)
from diffusion_core.objectives import Objective, x0_coefficients
from diffusion_core.respacing import respaced_alphas, respaced_betas
from diffusion_core.schedule import DiffusionSchedule

__all__ = [
    "ReverseCoefficients",
    "ReverseStep",
    "Variance",
    "ddim_coefficients",
    "ddpm_coefficients",
    "reverse_step",
]

Variance = Literal["posterior", "beta"]


@dataclasses.dataclass(frozen=True, eq=False)
class ReverseCoefficients:
    """(K,) read-only tables of one sampler, in sampling order (k = 0 is the noisiest step).

    timesteps: int64, the ORIGINAL schedule index τ_k given to the network.
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: √ᾱ and √(1-ᾱ) at τ_k (float64).
    x0_coef (A), eps_coef (B), sigma (σ): x_prev = A·x̂0 + B·ε̂ + σ·z (float64); σ[K-1] = 0.
    x0_prev_coef (C), x0_prev2_coef (D): multistep solvers (diffusion_core.multistep) add
    C·x̂0_{k-1} + D·x̂0_{k-2}, the clipped x̂0 of the two previous steps; zero (the default) for
    one-step samplers, and zero wherever that history does not exist yet.
    """

    timesteps: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    x0_coef: np.ndarray
    eps_coef: np.ndarray
    sigma: np.ndarray
    x0_prev_coef: np.ndarray | None = None
    x0_prev2_coef: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("x0_prev_coef", "x0_prev2_coef"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(np.shape(self.x0_coef)))
        for field in dataclasses.fields(self):
            dtype = np.int64 if field.name == "timesteps" else np.float64
            object.__setattr__(self, field.name, read_only(getattr(self, field.name), dtype))
        shapes = {getattr(self, f.name).shape for f in dataclasses.fields(self)}
        if len(shapes) != 1 or len(shapes.pop()) != 1:
            raise ValueError("ReverseCoefficients fields must all be 1-D of the same length K")

    @property
    def num_steps(self) -> int:
        """K, the number of reverse steps."""
        return int(self.timesteps.shape[0])

    @property
    def history_length(self) -> int:
        """How many previous x̂0 the steps use: 0 (one-step samplers), 1 or 2."""
        return 2 if np.any(self.x0_prev2_coef) else 1 if np.any(self.x0_prev_coef) else 0


class ReverseStep(NamedTuple):
    """One reverse step's result: x_prev (x_{t-1} in the respaced process) and the clipped x̂0,
    both in the inputs' dtype and of the broadcast shape."""

    x_prev: np.ndarray
    x0_pred: np.ndarray


class _Steps(NamedTuple):
    """Schedule quantities on the ascending indices τ, gathered from the ORIGINAL tables."""

    tau: np.ndarray  # (K,) int64
    sqrt_alphas_cumprod: np.ndarray  # √ᾱ_{τ_k}
    sqrt_one_minus_alphas_cumprod: np.ndarray  # √(1-ᾱ_{τ_k})
    alphas_cumprod_prev: np.ndarray  # ᾱ_{τ_{k-1}}, 1 for k = 0
    one_minus_alphas_cumprod_prev: np.ndarray  # 1 - ᾱ_{τ_{k-1}}, 0 for k = 0


def _steps(schedule: DiffusionSchedule, timesteps: Any) -> _Steps:
    T = schedule.num_timesteps
    tau = np.arange(T, dtype=np.int64) if timesteps is None else as_step_sequence(timesteps, T)
    one_minus = schedule.sqrt_one_minus_alphas_cumprod[tau] ** 2  # full relative precision
    return _Steps(tau=tau,
                  sqrt_alphas_cumprod=schedule.sqrt_alphas_cumprod[tau],
                  sqrt_one_minus_alphas_cumprod=schedule.sqrt_one_minus_alphas_cumprod[tau],
                  alphas_cumprod_prev=np.append(1.0, schedule.alphas_cumprod[tau][:-1]),
                  one_minus_alphas_cumprod_prev=np.append(0.0, one_minus[:-1]))


def _sampling_order(steps: _Steps, x0_coef: np.ndarray, eps_coef: np.ndarray,
                    sigma: np.ndarray) -> ReverseCoefficients:
    """Tables in ascending-τ order → `ReverseCoefficients` in sampling order, σ = 0 at the end."""
    sigma = np.array(sigma, dtype=np.float64)
    sigma[0] = 0.0  # no noise is added on the final step (to x0)
    return ReverseCoefficients(
        timesteps=steps.tau[::-1],
        sqrt_alphas_cumprod=steps.sqrt_alphas_cumprod[::-1],
        sqrt_one_minus_alphas_cumprod=steps.sqrt_one_minus_alphas_cumprod[::-1],
        x0_coef=x0_coef[::-1],
        eps_coef=eps_coef[::-1],
        sigma=sigma[::-1],
    )


def ddpm_coefficients(
    schedule: DiffusionSchedule, timesteps: Any = None, variance: Variance = "posterior"
) -> ReverseCoefficients:
    """DDPM ancestral sampling (Ho et al. 2020 Algorithm 2) on the process respaced to
    `timesteps` (ascending indices; None = all T steps).

    A = √ᾱ_prev, B = coef2'·√(1-ᾱ_t) with coef2' = √α'(1-ᾱ_prev)/(1-ᾱ_t) the posterior_mean_coef2
    of the respaced process (α' = ᾱ_t/ᾱ_prev), so that A·x̂0 + B·ε̂ = μ̃(x_t, x̂0); σ² = β̃'
    (`variance="posterior"`) or β' (`"beta"`), Ho et al. (2020) §3.2. σ = 0 at the last step.
    """
    variance = as_choice("variance", variance, get_args(Variance))
    steps = _steps(schedule, timesteps)
    one_minus_prev, one_minus = (steps.one_minus_alphas_cumprod_prev,
                                 steps.sqrt_one_minus_alphas_cumprod**2)
    beta, alpha = respaced_betas(schedule, steps.tau), respaced_alphas(schedule, steps.tau)
    x0_coef = np.sqrt(steps.alphas_cumprod_prev)  # coef1 + coef2·√ᾱ_t = √ᾱ_{t-1} (Ho eq. 7)
    # Ho et al. (2020) eq. 7 in the respaced process: coef2' = √α'(1-ᾱ_{t-1})/(1-ᾱ_t), and
    # B = coef2'·√(1-ᾱ_t)
    eps_coef = np.sqrt(alpha) * one_minus_prev / steps.sqrt_one_minus_alphas_cumprod
    # Ho et al. (2020) §3.2: σ² = β̃' = β'(1-ᾱ_{t-1})/(1-ᾱ_t) (eq. 7) or σ² = β'
    sigma_sq = {"posterior": beta * one_minus_prev / one_minus, "beta": beta}[variance]
    return _sampling_order(steps, x0_coef, eps_coef, np.sqrt(sigma_sq))


def ddim_coefficients(
    schedule: DiffusionSchedule, timesteps: Any = None, eta: float = 0.0
) -> ReverseCoefficients:
    """DDIM (Song et al. 2021 eq. 12, 16) on the indices `timesteps` (ascending; None = all T).

    σ = η·√((1-ᾱ_prev)/(1-ᾱ_t))·√(1-ᾱ_t/ᾱ_prev), A = √ᾱ_prev, B = √(1-ᾱ_prev-σ²).
    η = 0 is deterministic, η = 1 is DDPM with σ² = β̃. η > 1 is accepted while σ² ≤ 1-ᾱ_prev at
    every step (DDIM eq. 12 needs it); beyond that ValueError states the largest valid η.
    """
    eta = as_real("eta", eta, 0, np.inf, low_open=False, high_open=True)
    steps = _steps(schedule, timesteps)
    one_minus_prev, one_minus = (steps.one_minus_alphas_cumprod_prev,
                                 steps.sqrt_one_minus_alphas_cumprod**2)
    beta, alpha = respaced_betas(schedule, steps.tau), respaced_alphas(schedule, steps.tau)
    # DDIM eq. 16: σ_t(η)² = η²·(1-ᾱ_{t-1})/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_{t-1})
    unit_sigma_sq = one_minus_prev / one_minus * beta
    sigma_sq = eta**2 * unit_sigma_sq
    # DDIM eq. 12: B² = 1-ᾱ_{t-1}-σ_t², with eq. 16 substituted and 1-ᾱ_t = (1-ᾱ_{t-1}) + ᾱ_{t-1}β':
    # B² = (1-ᾱ_{t-1})·((1-ᾱ_{t-1})α' + (1-η²)β')/(1-ᾱ_t), free of cancellation for η ≤ 1
    eps_coef_sq = one_minus_prev * (one_minus_prev * alpha + (1.0 - eta**2) * beta) / one_minus
    if np.any(eps_coef_sq < -1e-12 * one_minus_prev):
        limit = np.sqrt(np.min(one_minus_prev[1:] / unit_sigma_sq[1:]))
        raise ValueError(f"eta = {eta} is too large for these timesteps: sigma^2 would exceed "
                         f"1 - alphas_cumprod_prev (DDIM eq. 12); the largest valid eta is "
                         f"{limit:.6g}")
    x0_coef = np.sqrt(steps.alphas_cumprod_prev)  # DDIM eq. 12: √ᾱ_{t-1}·x̂0
    eps_coef = np.sqrt(np.maximum(eps_coef_sq, 0.0))  # DDIM eq. 12
    return _sampling_order(steps, x0_coef, eps_coef, np.sqrt(sigma_sq))


def reverse_step(
    coeffs: ReverseCoefficients,
    k: int,
    xt: Any,
    model_output: Any,
    noise: Any,
    objective: Objective = "eps",
    clip_x0: bool = True,
    x0_history: tuple = (),
) -> ReverseStep:
    """The k-th reverse step (k = 0 noisiest) of the sampler `coeffs`: x_t → x_prev.

    xt, model_output, noise: arrays that broadcast, (B, ...); noise is z ~ N(0, I) drawn by the
    caller (None is accepted where σ_k = 0). `objective` says what model_output predicts;
    `clip_x0` clips x̂0 to [-1, 1] before ε̂ is recomputed from it. `x0_history`: the x0_pred of
    steps k-1 and k-2 (most recent first), needed where C_k or D_k is not 0 (multistep
    solvers). The NumPy reference the torch sampler must match. Returns ReverseStep(x_prev,
    x0_pred) in the inputs' dtype.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not (
            0 <= k < coeffs.num_steps):
        raise ValueError(f"k must be an integer in [0, {coeffs.num_steps - 1}], got {k!r}")
    if not isinstance(clip_x0, bool):
        raise ValueError(f"clip_x0 must be a bool, got {clip_x0!r}")
    if noise is None and coeffs.sigma[k] != 0:
        raise ValueError(f"noise is required: sigma at step k = {k} is {coeffs.sigma[k]:g}")
    history = [coeffs.x0_prev_coef[k], coeffs.x0_prev2_coef[k]]
    needed = max((j + 1 for j, c in enumerate(history) if c != 0), default=0)
    if len(x0_history) < needed:
        raise ValueError(f"x0_history needs the x0_pred of the {needed} previous step(s) at k = {k}, "
                         f"got {len(x0_history)}")
    (xt, model_output), dtype = as_data(xt=xt, model_output=model_output)
    if noise is None:
        noise = np.zeros(())
    else:
        (noise,), noise_dtype = as_data(noise=noise)
        dtype = np.result_type(dtype, noise_dtype)
    shape = broadcast_data(xt, model_output, noise)
    s0, s1 = coeffs.sqrt_alphas_cumprod[k], coeffs.sqrt_one_minus_alphas_cumprod[k]
    from_xt, from_output = x0_coefficients(objective, s0, s1)
    x0 = from_xt * xt + from_output * model_output  # objectives.py table for `objective`
    x0 = np.clip(x0, -1.0, 1.0) if clip_x0 else x0
    eps = (xt - s0 * x0) / s1  # Ho et al. (2020) eq. 4 solved for ε, from the clipped x̂0
    # DDIM eq. 12; for DDPM, Ho et al. (2020) eq. 7 with x_t = √ᾱ_t·x̂0 + √(1-ᾱ_t)·ε̂
    x_prev = coeffs.x0_coef[k] * x0 + coeffs.eps_coef[k] * eps + coeffs.sigma[k] * noise
    for c, past in zip(history[:needed], x0_history, strict=False):  # multistep: DPM-Solver++
        x_prev = x_prev + c * np.asarray(past, dtype=np.float64)
    return ReverseStep(x_prev=np.broadcast_to(x_prev, shape).astype(dtype),
                       x0_pred=np.broadcast_to(x0, shape).astype(dtype))
