"""Training objectives as (T,) coefficient tables: what the network regresses on, and how its
output becomes x̂0.

For objective o in {"eps", "x0", "v"} and index t (the paper's step t+1):

    target_t = target_x0_coef[t]·x0 + target_eps_coef[t]·ε
    x̂0      = x0_from_xt_coef[t]·x_t + x0_from_output_coef[t]·model_output

| objective | (target_x0_coef, target_eps_coef) | (x0_from_xt_coef, x0_from_output_coef) |
|---|---|---|
| eps (Ho et al. 2020 eq. 14) | (0, 1) | (1/√ᾱ, -√(1-ᾱ)/√ᾱ) |
| x0 | (1, 0) | (0, 1) |
| v (Salimans & Ho 2022 §4) | (-√(1-ᾱ), √ᾱ) | (√ᾱ, -√(1-ᾱ)) |

The ε objective cannot give x̂0 where ᾱ = 0 (zero terminal SNR): ValueError naming v.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import numpy as np

from diffusion_core._inputs import as_choice, read_only
from diffusion_core.schedule import DiffusionSchedule

Objective = Literal["eps", "x0", "v"]


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectiveTables:
    """Read-only (T,) float64 tables of one objective (see the module docstring)."""

    target_x0_coef: np.ndarray
    target_eps_coef: np.ndarray
    x0_from_xt_coef: np.ndarray
    x0_from_output_coef: np.ndarray

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, read_only(getattr(self, field.name)))


def x0_coefficients(
    objective: Objective, sqrt_alphas_cumprod: np.ndarray, sqrt_one_minus_alphas_cumprod: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(x0_from_xt_coef, x0_from_output_coef) at steps with the given √ᾱ and √(1-ᾱ) (float64).

    The one definition of x̂0 shared by `objective_tables` and `reverse.reverse_step`.
    """
    objective = as_choice("objective", objective, get_args(Objective))
    s0 = np.asarray(sqrt_alphas_cumprod, dtype=np.float64)
    s1 = np.asarray(sqrt_one_minus_alphas_cumprod, dtype=np.float64)
    if objective == "eps" and np.any(s0 == 0):
        raise ValueError("the eps objective cannot recover x0 at a step with alphas_cumprod = 0 "
                         "(zero terminal SNR); use the v objective")
    with np.errstate(divide="ignore"):  # s0 = 0 only reaches the "x0" and "v" rows below
        rows = {
            "eps": (1.0 / s0, -s1 / s0),  # Ho et al. (2020) eq. 4 solved for x0
            "x0": (np.zeros_like(s0), np.ones_like(s0)),
            "v": (s0, -s1),  # Salimans & Ho (2022) §4: x0 = √ᾱ·x_t - √(1-ᾱ)·v
        }
    return rows[objective]


def objective_tables(schedule: DiffusionSchedule, objective: Objective) -> ObjectiveTables:
    """The (T,) float64 target and x̂0 tables of `objective` on `schedule`."""
    x0_from_xt, x0_from_output = x0_coefficients(
        objective, schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    s0, s1 = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    targets = {
        "eps": (np.zeros_like(s0), np.ones_like(s0)),  # Ho et al. (2020) eq. 14: target ε
        "x0": (np.ones_like(s0), np.zeros_like(s0)),
        "v": (-s1, s0),  # Salimans & Ho (2022) §4: v = √ᾱ·ε - √(1-ᾱ)·x0
    }
    target_x0, target_eps = targets[objective]
    return ObjectiveTables(target_x0_coef=target_x0, target_eps_coef=target_eps,
                           x0_from_xt_coef=x0_from_xt, x0_from_output_coef=x0_from_output)
