"""Few-step solvers in log-SNR: DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) as step tables.

Notation (per step k, sampling order, s = the current noise level, t = the next one):
α = √ᾱ, σ = √(1-ᾱ), λ = log(α/σ) (half the log-SNR), h = λ_t - λ_s > 0, and m_j the data
prediction x̂0 of step k-j (m_0 the current one). DPM-Solver++ integrates the probability-flow
ODE in its exact exponential form (DPM-Solver++ eq. 9)

    x_t = (σ_t/σ_s)·x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂0(λ) dλ

with x̂0(λ) replaced by a polynomial through the last p predictions:

* order 1: x̂0 constant: x_t = (σ_t/σ_s) x_s + α_t(1 - e^{-h}) m_0. This is DDIM with η = 0
  exactly (DPM-Solver++ §4.1), which `test_core_multistep` proves entry by entry.
* order 2, "2M" (DPM-Solver++ Algorithm 2): D = (1 + 1/(2r)) m_0 - 1/(2r) m_1, r = h_{k-1}/h_k,
  x_t = (σ_t/σ_s) x_s + α_t(1 - e^{-h}) D.
* order 3, "3M": x̂0 the quadratic through m_0, m_1, m_2 at λ-offsets 0, -h_{k-1},
  -(h_{k-1}+h_{k-2}), integrated exactly (the exponential Adams–Bashforth weights of
  `lagrange_weights`), so the step is exact whenever x̂0 is a quadratic in λ.
* "SDE-DPM-Solver++(2M)" (DPM-Solver++ §5, eq. for the SDE solver; diffusers' and k-diffusion's
  `sde-dpmsolver++`/`dpmpp_2m_sde`): x_t = (σ_t/σ_s)e^{-h} x_s + α_t(1 - e^{-2h}) D
  + σ_t√(1 - e^{-2h}) z. Its first-order member is DDPM with σ² = β̃ exactly.

Warm-up and end, as the paper does: a step uses as many past predictions as exist (step 0 is
first order; 3M's step 1 is 2M), never reaches back across an infinite h (a zero-terminal-SNR
start, λ = -∞), and the last step into ᾱ = 1 (σ = 0, λ = +∞) is first order: x_0 = x̂0.

Every step is returned in the one form the samplers share (reverse.py):
x_prev = A·x̂0 + B·ε̂ + C·x̂0_{k-1} + D·x̂0_{k-2} + σ·z, with ε̂ = (x_t - α_s x̂0)/σ_s, i.e.
B = a·σ_s and A = α_t w_0 + a·α_s for x_prev = a·x_t + α_t Σ_j w_j m_j + σ z.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from diffusion_core._inputs import as_count, as_step_sequence, read_only
from diffusion_core.reverse import ReverseCoefficients
from diffusion_core.schedule import DiffusionSchedule

ORDERS = (1, 2, 3)


class MultistepTables(NamedTuple):
    """(K,) float64 tables of a path of K steps: x_prev = a·x_t + α_t·(w0·m0 + w1·m1 + w2·m2)
    + noise·z; ``order`` (K,) int64 is the order each step uses."""

    a: np.ndarray
    w0: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    noise: np.ndarray
    alpha_next: np.ndarray  # α_t of each step's target
    order: np.ndarray


def exponential_integrals(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I_n = ∫_0^h e^{u-h} u^n du for n = 0, 1, 2: 1 - e^{-h}, h - I_0, h² - 2·I_1 (h may be inf
    only where the caller discards I_1, I_2)."""
    i0 = -np.expm1(-h)
    with np.errstate(invalid="ignore"):
        i1 = h - i0
        i2 = h * h - 2.0 * i1
    return i0, i1, i2


def lagrange_weights(h: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weights (w0, w1, w2) with Σ_j w_j m_j = ∫_0^h e^{u-h} q(u) du for q the quadratic through
    (0, m0), (-h1, m1), (-h1-h2, m2): each w_j integrates one Lagrange basis polynomial."""
    i0, i1, i2 = exponential_integrals(h)
    a, b = h1, h2
    w0 = (i2 + (2 * a + b) * i1 + a * (a + b) * i0) / (a * (a + b))
    w1 = -(i2 + (a + b) * i1) / (a * b)
    w2 = (i2 + a * i1) / (b * (a + b))
    return w0, w1, w2


def _step_orders(order: int, h: np.ndarray, final_to_data: bool) -> np.ndarray:
    """The order of each step: at most the history there is, never across an infinite h."""
    K = len(h)
    orders = np.minimum(order, np.arange(1, K + 1))
    if K and not np.isfinite(h[0]):  # zero terminal SNR: step 0 starts at λ = -∞
        orders[1:] = np.minimum(orders[1:], np.arange(1, K))
    if final_to_data:
        orders[-1] = 1
    return orders


def dpmpp_tables(alphas_cumprod_path: Any, order: int = 2, stochastic: bool = False) -> MultistepTables:
    """DPM-Solver++ tables along ᾱ_0 < ᾱ_1 < ... < ᾱ_K (noisiest first; K+1 levels, K steps).

    ᾱ_0 may be 0 (zero terminal SNR) and ᾱ_K may be 1 (the step into data); strictly increasing
    puts every other level strictly between. ``order`` 1, 2 or 3 (``stochastic``, the
    SDE-DPM-Solver++, supports 1 and 2).
    """
    path = np.asarray(alphas_cumprod_path, dtype=np.float64)
    if path.ndim != 1 or len(path) < 2:
        raise ValueError(f"alphas_cumprod_path must be 1-D with at least 2 levels, got {path.shape}")
    if not (np.all(np.isfinite(path)) and np.all(np.diff(path) > 0) and path[0] >= 0 and path[-1] <= 1):
        raise ValueError("alphas_cumprod_path must increase strictly within [0, 1]")
    order = as_count("order", order)
    if order not in ORDERS or (stochastic and order > 2):
        raise ValueError(f"order must be 1, 2 or 3 (1 or 2 when stochastic), got {order}")
    alpha, sigma = np.sqrt(path), np.sqrt(1.0 - path)
    a_s, s_s, a_t, s_t = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    with np.errstate(divide="ignore"):
        exp_neg_h = a_s * s_t / (s_s * a_t)  # e^{-h} = e^{λ_s - λ_t}; 0 where λ_s = -∞ or λ_t = +∞
        h = -np.log(exp_neg_h)
    orders = _step_orders(order, h, final_to_data=path[-1] == 1.0)
    K = len(h)
    h_prev1 = np.append(np.inf, h[:-1])  # h_{k-1}
    h_prev2 = np.append([np.inf, np.inf], h[:-2])[:K]  # h_{k-2}
    phi = -np.expm1(-2.0 * h) if stochastic else -np.expm1(-h)  # 1 - e^{-2h} or 1 - e^{-h}
    w0, w1, w2 = phi.copy(), np.zeros(K), np.zeros(K)
    two = orders == 2  # DPM-Solver++ Algorithm 2: D = (1 + 1/(2r)) m0 - 1/(2r) m1
    half_inv_r = 0.5 * h[two] / h_prev1[two]
    w0[two], w1[two] = phi[two] * (1.0 + half_inv_r), -phi[two] * half_inv_r
    three = orders == 3
    w0[three], w1[three], w2[three] = lagrange_weights(h[three], h_prev1[three], h_prev2[three])
    if stochastic:
        a = s_t / s_s * exp_neg_h  # SDE-DPM-Solver++: (σ_t/σ_s)e^{-h}
        noise = s_t * np.sqrt(phi)  # σ_t √(1 - e^{-2h})
    else:
        a, noise = s_t / s_s, np.zeros(K)
    return MultistepTables(*(read_only(v, np.float64) for v in (a, w0, w1, w2, noise, a_t)),
                           read_only(orders, np.int64))


def as_sampler_form(tables: MultistepTables, alphas_cumprod_path: Any) -> tuple[np.ndarray, ...]:
    """(A, B, C, D, σ) of x_prev = A·x̂0 + B·ε̂ + C·x̂0_{k-1} + D·x̂0_{k-2} + σ·z, where
    ε̂ = (x_t - α_s x̂0)/σ_s; the same steps as ``tables``."""
    path = np.asarray(alphas_cumprod_path, dtype=np.float64)
    a_s, s_s = np.sqrt(path[:-1]), np.sqrt(1.0 - path[:-1])
    x0_coef = tables.alpha_next * tables.w0 + tables.a * a_s
    return (x0_coef, tables.a * s_s, tables.alpha_next * tables.w1, tables.alpha_next * tables.w2,
            tables.noise)


def path_coefficients(alphas_cumprod_path: Any, order: int = 2, stochastic: bool = False,
                      timesteps: Any = None) -> ReverseCoefficients:
    """The sampler tables of DPM-Solver++ along any path of ᾱ (see `dpmpp_tables`); ``timesteps``
    (K,) labels the steps for the network (default K-1, ..., 0)."""
    path = np.asarray(alphas_cumprod_path, dtype=np.float64)
    x0_coef, eps_coef, c, d, sigma = as_sampler_form(dpmpp_tables(path, order, stochastic), path)
    K = len(path) - 1
    labels = np.arange(K - 1, -1, -1) if timesteps is None else np.asarray(timesteps)
    return ReverseCoefficients(timesteps=labels, sqrt_alphas_cumprod=np.sqrt(path[:-1]),
                               sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - path[:-1]),
                               x0_coef=x0_coef, eps_coef=eps_coef, sigma=sigma, x0_prev_coef=c,
                               x0_prev2_coef=d)


def dpmpp_coefficients(schedule: DiffusionSchedule, timesteps: Any = None, order: int = 2,
                       stochastic: bool = False) -> ReverseCoefficients:
    """DPM-Solver++ of ``order`` (SDE-DPM-Solver++ when ``stochastic``) on the indices
    ``timesteps`` (ascending; None = all T), ending with the step into ᾱ = 1. √ᾱ and √(1-ᾱ)
    come from the schedule's own tables (full precision for 1-ᾱ near 0)."""
    T = schedule.num_timesteps
    tau = np.arange(T, dtype=np.int64) if timesteps is None else as_step_sequence(timesteps, T)
    tau = tau[::-1]  # sampling order: noisiest first
    coeffs = path_coefficients(np.append(schedule.alphas_cumprod[tau], 1.0), order, stochastic, tau)
    return dataclasses.replace(coeffs, sqrt_alphas_cumprod=schedule.sqrt_alphas_cumprod[tau],
                               sqrt_one_minus_alphas_cumprod=schedule.sqrt_one_minus_alphas_cumprod[tau])
