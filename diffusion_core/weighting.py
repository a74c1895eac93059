"""Per-timestep loss weights: uniform (Ho et al. 2020's simple loss) or min-SNR-γ (Hang et al.
2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").

Min-SNR-γ weighs every step's loss as if the network were trained on x0 with weight
min(SNR_t, γ), SNR_t = ᾱ_t/(1-ᾱ_t): the high-SNR (nearly clean) steps, which dominate the
x0-loss but teach little, are capped at γ. Expressed in each objective's own MSE, through
‖x̂0 - x0‖² = ‖ε̂ - ε‖²/SNR = ‖v̂ - v‖²/(1 + SNR):

| objective | weight of its MSE at step t |
|---|---|
| eps | min(SNR, γ)/SNR  (1 where SNR ≤ γ, including SNR = 0 at zero terminal SNR) |
| x0 | min(SNR, γ) |
| v | min(SNR, γ)/(SNR + 1) |

Uniform is 1 everywhere. Index t is the paper's step t+1.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from diffusion_core._inputs import as_choice, as_real, read_only
from diffusion_core.objectives import Objective
from diffusion_core.schedule import DiffusionSchedule

LossWeighting = Literal["uniform", "min-snr"]
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
    capped = np.minimum(snr, gamma)  # Hang et al. (2023) eq. 6: min(SNR_t, γ) for the x0-loss
    with np.errstate(divide="ignore", invalid="ignore"):
        per_objective = {
            "eps": np.where(snr <= gamma, 1.0, gamma / snr),  # min(SNR, γ)/SNR without 0/0
            "x0": capped,
            "v": capped / (snr + 1.0),
        }
    return read_only(per_objective[objective])
