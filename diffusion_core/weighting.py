"""Per-timestep loss weights: uniform (Ho et al. 2020's simple loss), min-SNR-γ (Hang et al.
2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") or truncated SNR (Salimans &
Ho 2022 §4, the weighting of progressive distillation).

Min-SNR-γ weighs every step's loss as if the network were trained on x0 with weight
min(SNR_t, γ), SNR_t = ᾱ_t/(1-ᾱ_t): the high-SNR (nearly clean) steps, which dominate the
x0-loss but teach little, are capped at γ. Expressed in each objective's own MSE, through
‖x̂0 - x0‖² = ‖ε̂ - ε‖²/SNR = ‖v̂ - v‖²/(1 + SNR):

| objective | min-SNR-γ: weight of its MSE at step t | truncated SNR |
|---|---|---|
| eps | min(SNR, γ)/SNR (1 where SNR ≤ γ, also at SNR = 0) | max(SNR, 1)/SNR (none at SNR = 0) |
| x0 | min(SNR, γ) | max(SNR, 1) |
| v | min(SNR, γ)/(SNR + 1) | max(SNR, 1)/(SNR + 1) |

Truncated SNR weighs the x0-loss by max(SNR_t, 1): SNR where the image is mostly there, 1 where
it is mostly noise, so the noisiest steps (SNR → 0) still count; the ε-loss cannot express it at
SNR = 0 (ε carries nothing about x0 there), so ε with zero terminal SNR is refused.
Uniform is 1 everywhere. Index t is the paper's step t+1.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from diffusion_core._inputs import as_choice, as_real, read_only
from diffusion_core.objectives import Objective
from diffusion_core.schedule import DiffusionSchedule

LossWeighting = Literal["uniform", "min-snr", "truncated-snr"]
DEFAULT_MIN_SNR_GAMMA = 5.0  # Hang et al. (2023) §4: γ = 5 throughout


def loss_weights(schedule: DiffusionSchedule, objective: Objective, weighting: LossWeighting = "uniform",
                 gamma: float = DEFAULT_MIN_SNR_GAMMA) -> np.ndarray:
    """(T,) read-only float64 weights of the per-step MSE of ``objective`` (table above)."""
    objective = as_choice("objective", objective, get_args(Objective))
    weighting = as_choice("weighting", weighting, get_args(LossWeighting))
    gamma = as_real("gamma", gamma, 0.0, np.inf, low_open=True, high_open=True)
    if weighting == "uniform":
        return read_only(np.ones(schedule.num_timesteps))
    snr = schedule.snr
    if weighting == "truncated-snr":
        return read_only(_truncated_snr(snr, objective))
    capped = np.minimum(snr, gamma)  # Hang et al. (2023) eq. 6: min(SNR_t, γ) for the x0-loss
    with np.errstate(divide="ignore", invalid="ignore"):
        per_objective = {
            "eps": np.where(snr <= gamma, 1.0, gamma / snr),  # min(SNR, γ)/SNR without 0/0
            "x0": capped,
            "v": capped / (snr + 1.0),
        }
    return read_only(per_objective[objective])


def _truncated_snr(snr: np.ndarray, objective: str) -> np.ndarray:
    """max(SNR, 1) on the x0-loss (Salimans & Ho 2022 §4), in ``objective``'s own MSE."""
    truncated = np.maximum(snr, 1.0)
    if objective == "x0":
        return truncated
    if objective == "v":
        return truncated / (snr + 1.0)
    if np.any(snr == 0):
        raise ValueError("truncated-SNR weights cannot be put on the eps loss at a step with SNR = 0 "
                         "(zero terminal SNR): use the v or x0 objective")
    return truncated / snr
