"""The schedule object: every table derived from β, computed once in float64.

Index convention: array index t = 0..T-1 stands for the paper's step t+1. So
`alphas_cumprod[0] = 1 - betas[0]` is ᾱ₁ and `alphas_cumprod_prev[0] = 1` is ᾱ₀.

Glossary (each field is a read-only (T,) float64 array):

| field | paper |
|---|---|
| `betas` | β_t |
| `alphas` | α_t = 1 - β_t |
| `alphas_cumprod` | ᾱ_t = ∏_{s≤t} α_s |
| `alphas_cumprod_prev` | ᾱ_{t-1} (ᾱ₀ = 1 at index 0) |
| `sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod` | √ᾱ_t, √(1-ᾱ_t) |
| `sqrt_recip_alphas_cumprod`, `sqrt_recipm1_alphas_cumprod` | 1/√ᾱ_t, √(1/ᾱ_t - 1) |
| `snr` | ᾱ_t/(1-ᾱ_t) |
| `posterior_variance` | β̃_t = β_t(1-ᾱ_{t-1})/(1-ᾱ_t) (0 at index 0) |
| `posterior_log_variance_clipped` | log β̃_t with index 0 set to index 1 |
| `posterior_mean_coef1`, `posterior_mean_coef2` | μ̃_t = coef1·x0 + coef2·x_t |

Zero terminal SNR (last β = 1, last ᾱ = 0): `sqrt_recip_alphas_cumprod` and
`sqrt_recipm1_alphas_cumprod` are +inf at the last index, and only there; every other table is
finite. The public functions never multiply by those infinities: the ones that would (recovering
x0 from ε at that step) raise ValueError instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from diffusion_core._inputs import read_only
from diffusion_core.betas import validate_betas


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class DiffusionSchedule:
    """All float64 tables of the forward process q for one β schedule; build with `from_betas`.

    Frozen; every array is read-only and of shape (T,). See the module docstring for the
    glossary and the index convention (index t is the paper's step t+1).
    """

    betas: np.ndarray
    alphas: np.ndarray = dataclasses.field(init=False)
    alphas_cumprod: np.ndarray = dataclasses.field(init=False)
    alphas_cumprod_prev: np.ndarray = dataclasses.field(init=False)
    sqrt_alphas_cumprod: np.ndarray = dataclasses.field(init=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(init=False)
    sqrt_recip_alphas_cumprod: np.ndarray = dataclasses.field(init=False)
    sqrt_recipm1_alphas_cumprod: np.ndarray = dataclasses.field(init=False)
    snr: np.ndarray = dataclasses.field(init=False)
    posterior_variance: np.ndarray = dataclasses.field(init=False)
    posterior_log_variance_clipped: np.ndarray = dataclasses.field(init=False)
    posterior_mean_coef1: np.ndarray = dataclasses.field(init=False)
    posterior_mean_coef2: np.ndarray = dataclasses.field(init=False)

    @classmethod
    def from_betas(cls, betas: Any) -> DiffusionSchedule:
        """The schedule of (T,) `betas` (validated by `validate_betas`; any real dtype)."""
        return cls(betas)

    def __post_init__(self) -> None:
        betas = validate_betas(self.betas)
        alphas = 1.0 - betas  # Ho et al. (2020) §2: α_t = 1 - β_t
        alphas_cumprod = np.cumprod(alphas)  # Ho et al. (2020) §2: ᾱ_t = ∏ α_s
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])  # ᾱ_0 = 1
        with np.errstate(divide="ignore"):  # log 0 = -inf only where β = 1 (zero terminal SNR)
            # 1 - ᾱ_t = -expm1(Σ log(1 - β_s)): full relative precision where ᾱ ≈ 1, which
            # 1 - cumprod(1 - β) loses (β = 1e-10 would keep only 6 digits); > 0 always.
            one_minus = -np.expm1(np.cumsum(np.log1p(-betas)))
        one_minus_prev = np.append(0.0, one_minus[:-1])
        with np.errstate(divide="ignore"):  # +inf only where ᾱ = 0 (zero terminal SNR)
            sqrt_recip = 1.0 / np.sqrt(alphas_cumprod)
            sqrt_recipm1 = np.sqrt(one_minus / alphas_cumprod)  # √(1/ᾱ - 1) without cancellation
        # Ho et al. (2020) eq. 7: β̃_t = (1 - ᾱ_{t-1})/(1 - ᾱ_t)·β_t
        posterior_variance = betas * one_minus_prev / one_minus
        # β̃ at index 0 is 0; its log is clipped to index 1's (improved-diffusion). With T = 1
        # there is no index 1: log β_0, the upper bound of the reverse variance, is used instead.
        first = posterior_variance[1] if betas.size > 1 else betas[0]
        log_clipped = np.log(np.append(first, posterior_variance[1:]))
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(one_minus),
            "sqrt_recip_alphas_cumprod": sqrt_recip,
            "sqrt_recipm1_alphas_cumprod": sqrt_recipm1,
            "snr": alphas_cumprod / one_minus,  # Kingma et al. (2021) eq. 2: SNR = ᾱ/(1-ᾱ)
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_clipped,
            # Ho et al. (2020) eq. 7: μ̃_t = √ᾱ_{t-1}β_t/(1-ᾱ_t)·x0 + √α_t(1-ᾱ_{t-1})/(1-ᾱ_t)·x_t
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / one_minus,
            "posterior_mean_coef2": one_minus_prev * np.sqrt(alphas) / one_minus,
        }
        for name, table in tables.items():
            object.__setattr__(self, name, read_only(table))

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    def __repr__(self) -> str:
        return f"DiffusionSchedule(num_timesteps={self.num_timesteps})"
