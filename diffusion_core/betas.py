"""β schedules: pure functions of T returning validated (T,) float64 arrays.

Index convention: `betas[t]`, t = 0..T-1, is the paper's β_{t+1}. Every function here returns a
fresh array that has passed `validate_betas`: finite, 0 < β < 1 (β = 1 allowed only as the last
entry, zero terminal SNR), 1 - β < 1 in float64, and ᾱ = cumprod(1 - β), except for a terminal
ᾱ = 0, at least the smallest normal float64 (so 1/ᾱ is finite); ᾱ is then strictly decreasing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import numpy as np

from diffusion_core._inputs import as_count, as_real

BetaScheduleName = Literal["linear", "cosine", "sigmoid"]


def validate_betas(betas: Any) -> np.ndarray:
    """A checked (T,) float64 copy of user-supplied betas, or ValueError naming the problem."""
    b = np.asarray(betas)
    if b.dtype.kind not in "fiu":
        raise ValueError(f"betas must be a real array, got dtype {b.dtype}")
    if b.ndim != 1:
        raise ValueError(f"betas must be 1-D of shape (T,), got shape {b.shape}")
    if b.size == 0:
        raise ValueError("betas must have T >= 1 entries, got T = 0")
    b = np.array(b, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise ValueError("betas contain non-finite values (NaN or inf)")
    inside = (b > 0) & (b < 1)
    inside[-1] = 0 < b[-1] <= 1  # β = 1 only at the last step (zero terminal SNR)
    if not np.all(inside):
        i = int(np.flatnonzero(~inside)[0])
        raise ValueError(f"betas must lie in (0, 1) (1 allowed only as the last entry); "
                         f"betas[{i}] = {float(b[i])!r}")
    alphas = 1.0 - b
    if np.any(alphas == 1.0):
        i = int(np.flatnonzero(alphas == 1.0)[0])
        raise ValueError(f"betas[{i}] = {float(b[i])!r} is below float64 resolution: 1 - beta rounds "
                         "to 1")
    alphas_cumprod = np.cumprod(alphas)  # Ho et al. (2020) eq. 4: ᾱ_t = ∏_{s≤t} α_s
    positive = alphas_cumprod if b[-1] < 1 else alphas_cumprod[:-1]
    if np.any(positive < np.finfo(np.float64).tiny):
        i = int(np.flatnonzero(positive < np.finfo(np.float64).tiny)[0])
        raise ValueError(f"alphas_cumprod underflows at index {i} (below the smallest normal "
                         "float64); use fewer steps or smaller betas")
    # ᾱ is now strictly decreasing: for a normal float a and α ≤ 1 - 2^-53, a·α rounds below a
    return b


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al. (2020) §4: β linear from `beta_start` (index 0) to `beta_end` (index T-1).

    Both endpoints are exact. For T = 1 the single step is `beta_start` (the interpolation
    parameter t/(T-1) is taken as 0, as `np.linspace` does). Returns (T,) float64.
    """
    T = as_count("T", T)
    beta_start = as_real("beta_start", beta_start, 0, 1, low_open=True, high_open=True)
    beta_end = as_real("beta_end", beta_end, 0, 1, low_open=True, high_open=True)
    return validate_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Sigmoid schedule (Xu et al. 2022, GeoDiff; as in diffusers): β_t = β_start +
    (β_end - β_start)·sigmoid(u_t), u = linspace(-6, 6, T) (u = [-6] for T = 1). (T,) float64."""
    T = as_count("T", T)
    beta_start = as_real("beta_start", beta_start, 0, 1, low_open=True, high_open=True)
    beta_end = as_real("beta_end", beta_end, 0, 1, low_open=True, high_open=True)
    u = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-u))
    return validate_betas(beta_start + (beta_end - beta_start) * sigmoid)


def betas_from_alpha_bar(
    fn: Callable[[float], float], T: int, max_beta: float = 0.999
) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17 discretised: β_t = min(1 - f((t+1)/T)/f(t/T), max_beta).

    `fn` maps u in [0, 1] to ᾱ(u) (any positive multiple works: only ratios are used); it must be
    finite, positive on [0, 1) and non-negative at 1. With `max_beta = 1` and fn(1) = 0 the last β
    is 1 (zero terminal SNR). Index t of the result is the step from u = t/T to (t+1)/T.
    Returns (T,) float64.
    """
    T = as_count("T", T)
    max_beta = as_real("max_beta", max_beta, 0, 1, low_open=True, high_open=False)
    f = np.array([fn(i / T) for i in range(T + 1)], dtype=np.float64)
    if not np.all(np.isfinite(f)) or np.any(f[:-1] <= 0) or f[-1] < 0:
        raise ValueError("alpha_bar fn must be finite, positive on [0, 1) and >= 0 at 1")
    ratio = f[1:] / f[:-1]
    return validate_betas(np.minimum(1.0 - ratio, max_beta))  # Nichol & Dhariwal (2021) eq. 17


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17: f(u) = cos²((u + s)/(1 + s)·π/2), ᾱ_t = f(t)/f(0),
    β clipped at `max_beta`. (T,) float64."""
    s = as_real("s", s, 0, math.inf, low_open=False, high_open=True)

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal (2021) eq. 17

    return betas_from_alpha_bar(f, T, max_beta)


def rescale_zero_terminal_snr(betas: Any) -> np.ndarray:
    """Lin et al. (2024) Algorithm 1: shift and scale √ᾱ so the last ᾱ is 0 and the first is kept.

    Needs T >= 2 (for T = 1 the first step is the last). The last β of the result is exactly 1.
    Returns (T,) float64.
    """
    betas = validate_betas(betas)
    if betas.size < 2:
        raise ValueError("zero terminal SNR rescaling needs T >= 2 (with T = 1 the first step, "
                         "whose alpha_bar is kept, is also the last, which must become 0)")
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))  # Lin et al. (2024) Alg. 1
    alphas_cumprod = sqrt_ab**2
    with np.errstate(divide="ignore", invalid="ignore"):  # a collapse in float64 is caught below
        alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    rescaled = 1.0 - alphas
    if not np.all(rescaled[:-1] < 1):  # also catches NaN from a collapse to 0/0
        i = int(np.flatnonzero(~(rescaled[:-1] < 1))[0])
        raise ValueError(f"zero terminal SNR rescaling gives beta = 1 in float64 at index {i}, "
                         "before the last step: the last steps are too small next to the "
                         "earlier ones to rescale")
    return validate_betas(rescaled)


_SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: BetaScheduleName, T: int, **kwargs: Any) -> np.ndarray:
    """The named schedule's (T,) float64 betas; keyword arguments go to that function."""
    if name not in get_args(BetaScheduleName):
        raise ValueError(f"unknown beta schedule: {name}")
    return _SCHEDULES[name](T, **kwargs)
