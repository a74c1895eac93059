"""Timestep respacing: sampling with K ≤ T steps on a subsequence τ of the schedule indices.

The respaced process keeps ᾱ at the kept steps, ᾱ'_k = ᾱ_{τ_k}, so its one-step betas are
β'_k = 1 - ᾱ_{τ_k}/ᾱ_{τ_{k-1}} with ᾱ_{τ_{-1}} = 1 (Nichol & Dhariwal 2021 §4; DDIM §4.2).
DDPM and DDIM sampling over τ are exact on that process. The network is still told the
ORIGINAL index τ_k. Indices follow the package convention: index t is the paper's step t+1.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from diffusion_core._inputs import as_choice, as_count, as_step_sequence
from diffusion_core.schedule import DiffusionSchedule

Spacing = Literal["leading", "trailing", "linspace"]


def select_timesteps(T: int, num_steps: int, spacing: Spacing) -> np.ndarray:
    """K = `num_steps` distinct schedule indices out of 0..T-1, as an ascending (K,) int64 array.

    Spacings (Lin et al. 2024 Table 2; integer arithmetic, rounding half up):
    - "leading":  τ_i = i·(T // K), i = 0..K-1 (starts at 0; the last index may be < T-1).
    - "trailing": τ_i = round((i+1)·T/K) - 1, i = 0..K-1 (the last index is T-1).
    - "linspace": τ_i = round(i·(T-1)/(K-1)) (0 and T-1 both kept; K = 1 gives [T-1]).
    Sampling runs them in reverse, so "trailing" and "linspace" start at the last step T-1.
    """
    T = as_count("T", T)
    K = as_count("num_steps", num_steps)
    if K > T:
        raise ValueError(f"num_steps must be <= T = {T}, got {K}")
    spacing = as_choice("spacing", spacing, get_args(Spacing))
    i = np.arange(K, dtype=np.int64)
    rules = {  # Lin et al. (2024) Table 2, in 0-based indices; (2a + b) // (2b) = round(a/b)
        "leading": lambda: i * (T // K),
        "trailing": lambda: (2 * (i + 1) * T + K) // (2 * K) - 1,
        "linspace": lambda: (2 * i * (T - 1) + (K - 1)) // (2 * (K - 1)) if K > 1 else i + T - 1,
    }
    return rules[spacing]().astype(np.int64)


def respaced_betas(schedule: DiffusionSchedule, timesteps: Any) -> np.ndarray:
    """β'_k = 1 - ᾱ_{τ_k}/ᾱ_{τ_{k-1}} (ᾱ_{τ_{-1}} = 1), the (K,) float64 betas of the process
    on the ascending indices τ = `timesteps`. The product over each merged run of steps is
    taken as a sum of log(1 - β), which keeps full relative precision where β' is small. Where
    τ_k = τ_{k-1} + 1 the original β is kept exactly, so respacing over all T steps returns the
    original betas."""
    tau = as_step_sequence(timesteps, schedule.num_timesteps)
    prev = np.append(-1, tau[:-1])
    with np.errstate(divide="ignore"):  # log(1 - β) = -inf where β = 1 gives β' = 1
        log_alphas = np.log1p(-schedule.betas[: tau[-1] + 1])
        # improved-diffusion respace.py: β'_k = 1 - ᾱ_{τ_k}/ᾱ_{τ_{k-1}}
        #                                     = 1 - exp(Σ_{τ_{k-1} < s ≤ τ_k} log α_s)
        merged = -np.expm1(np.add.reduceat(log_alphas, prev + 1))
    return np.where(tau - prev == 1, schedule.betas[tau], merged)


def respaced_alphas(schedule: DiffusionSchedule, timesteps: Any) -> np.ndarray:
    """α'_k = ᾱ_{τ_k}/ᾱ_{τ_{k-1}} (ᾱ_{τ_{-1}} = 1), the (K,) float64 one-step α of the respaced
    process, to full relative precision even where β' ≈ 1 (where 1 - β' would not be); the
    original α is kept where τ_k = τ_{k-1} + 1."""
    tau = as_step_sequence(timesteps, schedule.num_timesteps)
    prev = np.append(-1, tau[:-1])
    ratio = schedule.alphas_cumprod[tau] / np.append(1.0, schedule.alphas_cumprod)[prev + 1]
    return np.where(tau - prev == 1, schedule.alphas[tau], ratio)


def respace(schedule: DiffusionSchedule, timesteps: Any) -> DiffusionSchedule:
    """The K-step `DiffusionSchedule` of the respaced process on the ascending indices
    `timesteps`: its ᾱ equals the original ᾱ at those indices to float64 rounding of the
    cumulative product, and of α' = 1 - β', which keeps only u/α' relative precision where a
    merged β' is close to 1. The samplers therefore take ᾱ from the original schedule."""
    return DiffusionSchedule.from_betas(respaced_betas(schedule, timesteps))


def log_snr_timesteps(schedule: DiffusionSchedule, num_steps: int) -> np.ndarray:
    """K ascending indices whose half log-SNR λ = log(√ᾱ/√(1-ᾱ)) is as close to uniform as the
    integer grid allows, from index 0 to T-1 (both kept): the step list DPM-Solver (Lu et al.
    2022 §3.3) recommends. Each uniform λ target takes its nearest index; where two targets
    land on one index (K close to T) the later ones move up by one, keeping K distinct indices.
    A zero-terminal-SNR last step (λ = -∞) is kept and the targets end at the index before it."""
    T = schedule.num_timesteps
    K = as_count("num_steps", num_steps)
    if K > T:
        raise ValueError(f"num_steps must be <= T = {T}, got {K}")
    if K == 1:
        return np.array([T - 1], dtype=np.int64)
    with np.errstate(divide="ignore"):
        lam = np.log(schedule.sqrt_alphas_cumprod) - np.log(schedule.sqrt_one_minus_alphas_cumprod)
    finite_end = T - 1 if np.isfinite(lam[-1]) else T - 2  # λ strictly decreases in t
    targets = np.linspace(lam[0], lam[finite_end], K)
    nearest = np.abs(lam[None, : finite_end + 1] - targets[:, None]).argmin(axis=1)
    nearest[-1] = T - 1
    for i in range(1, K):  # distinct and ascending; room is left for the steps still to come
        nearest[i] = min(max(nearest[i], nearest[i - 1] + 1), T - K + i)
    return nearest.astype(np.int64)
