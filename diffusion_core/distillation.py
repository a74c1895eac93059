"""The math of progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models", Algorithm 2): a student whose one DDIM step t → t'' lands where
its teacher's two DDIM steps t → t' → t'' land.

With α = √ᾱ, σ = √(1-ᾱ) and the DDIM (η = 0) step of Song et al. (2021) eq. 12 written as a
jump between any two indices s < t,

    z_s = A(t, s)·x̂0 + B(t, s)·z_t,   B = σ_s/σ_t,   A = α_s − B·α_t = sin(θ_t − θ_s)/σ_t

(θ = atan2(σ, α), the angle of the VP path; s = -1 is the clean end, ᾱ = 1: A = 1, B = 0), the
teacher goes z_t → z_t' → z_t'' with its x̂0 at (z_t, t) and at (z_t', t'), and the student's
target is the x̃ with which one jump from z_t reaches z_t'' (the paper's eq. in Algorithm 2):

    x̃ = (z_t'' − B(t, t'')·z_t) / A(t, t'').

A(t, s) > 0 whenever s < t (θ grows with t), also at zero terminal SNR (α_t = 0: A = α_s) and
into the clean end (A = 1): nothing here divides by zero. In ε or v form the target is the
core's conversion of x̃ at (z_t, t) (``predict_eps_from_x0``, ``v_target``).

Step lists: each round halves the student's steps. A teacher on the ascending indices
a_0 < a_1 < ... < a_{2K-1} runs a_{2K-1} → a_{2K-2} → ... → a_0 → clean; its student runs
a_{2K-1} → a_{2K-3} → ... → a_1 → clean, i.e. on a[1::2], with the teacher's a[0::2] as the
midpoints. With the samplers' "trailing" spacing a[1::2] of the 2K-step list is the K-step list,
so every round's student steps are the ones ``select_timesteps`` gives. Index t is the paper's
step t+1, as everywhere in the core.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from diffusion_core._inputs import as_count, as_data, as_step_sequence, read_only
from diffusion_core.respacing import Spacing, select_timesteps
from diffusion_core.schedule import DiffusionSchedule

CLEAN = -1  # the index of x0 itself (ᾱ = 1) as a jump's target


def _angles_and_sigmas(schedule: DiffusionSchedule, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """θ_t = atan2(σ_t, α_t) and σ_t of indices t (CLEAN: θ = 0, σ = 0), float64."""
    sigma = schedule.sqrt_one_minus_alphas_cumprod
    theta = np.arctan2(sigma, schedule.sqrt_alphas_cumprod)
    clean = t == CLEAN
    return np.where(clean, 0.0, theta[np.maximum(t, 0)]), np.where(clean, 0.0, sigma[np.maximum(t, 0)])


def _jump_indices(schedule: DiffusionSchedule, t: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t)
    s = np.asarray(s)
    T = schedule.num_timesteps
    for name, idx, low in (("t", t, 0), ("s", s, CLEAN)):
        if idx.dtype.kind not in "iu" or np.any(idx < low) or np.any(idx >= T):
            raise ValueError(f"{name} must be integer indices in [{low}, {T - 1}], got {idx!r}")
    if np.any(s >= t):
        raise ValueError("a DDIM jump goes down: every s must be below its t")
    return t.astype(np.int64), s.astype(np.int64)


def ddim_jump_coefficients(schedule: DiffusionSchedule, t: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) float64, of the broadcast shape of ``t`` and ``s``: the DDIM η = 0 step from index t
    down to s (s = -1: the clean end) is z_s = A·x̂0 + B·z_t (module docstring)."""
    t, s = _jump_indices(schedule, t, s)
    (theta_t, sigma_t), (theta_s, sigma_s) = _angles_and_sigmas(schedule, t), _angles_and_sigmas(schedule, s)
    # Song et al. (2021) eq. 12 at η = 0 with ε̂ = (z_t − α_t x̂0)/σ_t. A in angles: full precision
    # where s and t are close, where α_s σ_t − σ_s α_t would cancel
    a = np.sin(theta_t - theta_s) / sigma_t
    b = sigma_s / sigma_t
    return a, b


def ddim_jump(schedule: DiffusionSchedule, xt: Any, t: Any, s: Any, x0: Any) -> np.ndarray:
    """z_s = A(t, s)·x̂0 + B(t, s)·z_t for a batch: ``xt`` and ``x0`` (B, ...), ``t``, ``s`` (B,)
    or scalars. Returns the data's floating dtype."""
    (xt, x0), dtype = as_data(xt=xt, x0=x0)
    a, b = ddim_jump_coefficients(schedule, t, s)
    shape = a.shape + (1,) * (xt.ndim - a.ndim)
    return (a.reshape(shape) * x0 + b.reshape(shape) * xt).astype(dtype, copy=False)


def distillation_x0_target(schedule: DiffusionSchedule, xt: Any, t: Any, s: Any, xs: Any) -> np.ndarray:
    """x̃ = (z_s − B(t, s)·z_t)/A(t, s): the x̂0 with which one DDIM jump from (z_t, t) lands on
    ``xs`` = z_s (Salimans & Ho 2022, Algorithm 2, with s = t''). Shapes as :func:`ddim_jump`."""
    (xt, xs), dtype = as_data(xt=xt, xs=xs)
    a, b = ddim_jump_coefficients(schedule, t, s)
    shape = a.shape + (1,) * (xt.ndim - a.ndim)
    return ((xs - b.reshape(shape) * xt) / a.reshape(shape)).astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class DistillationTables:
    """The K student steps of one round, in running order (noisiest first), as read-only (K,)
    arrays: the student's step k goes from ``timesteps[k]`` to ``next_timesteps[k]`` (-1 = clean),
    the teacher's two steps through ``mid_timesteps[k]``. Each (A, B) pair is a
    :func:`ddim_jump_coefficients`: ``teacher_first`` t → t', ``teacher_second`` t' → t'',
    ``student`` t → t''; the target is x̃ = (z_t'' − student_b·z_t)/student_a."""

    timesteps: np.ndarray
    mid_timesteps: np.ndarray
    next_timesteps: np.ndarray
    teacher_first_a: np.ndarray
    teacher_first_b: np.ndarray
    teacher_second_a: np.ndarray
    teacher_second_b: np.ndarray
    student_a: np.ndarray
    student_b: np.ndarray


def distillation_tables(schedule: DiffusionSchedule, teacher_timesteps: Any) -> DistillationTables:
    """The tables of the round whose teacher runs on the ascending ``teacher_timesteps`` (2K
    indices); its student runs on their odd positions, ``teacher_timesteps[1::2]``."""
    tau = as_step_sequence(teacher_timesteps, schedule.num_timesteps)
    if len(tau) % 2:
        raise ValueError(f"a teacher of {len(tau)} steps cannot be halved: it needs an even number")
    down = tau[::-1]  # running order: a_{2K-1}, a_{2K-2}, ..., a_0
    t, mid = down[0::2], down[1::2]
    nxt = np.append(down[2::2], CLEAN)
    fields = {"timesteps": t, "mid_timesteps": mid, "next_timesteps": nxt}
    for name, (start, stop) in {"teacher_first": (t, mid), "teacher_second": (mid, nxt),
                                "student": (t, nxt)}.items():
        fields[f"{name}_a"], fields[f"{name}_b"] = ddim_jump_coefficients(schedule, start, stop)
    return DistillationTables(**{k: read_only(v, np.int64 if k.endswith("timesteps") else np.float64)
                                 for k, v in fields.items()})


def distillation_timesteps(T: int, from_steps: int, to_steps: int,
                           spacing: Spacing = "trailing") -> list[np.ndarray]:
    """The teachers' ascending step lists, one per round, then the last student's:
    [from_steps, from_steps/2, ..., to_steps] lists, each the odd positions of the one before
    (the first is ``select_timesteps(T, from_steps, spacing)``). ValueError unless
    from_steps/to_steps is a power of two of at least 2."""
    from_steps, to_steps = as_count("from_steps", from_steps), as_count("to_steps", to_steps)
    ratio, remainder = divmod(from_steps, to_steps)
    if remainder or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"from_steps / to_steps must be a power of two of at least 2 (each round "
                         f"halves the steps), got {from_steps} / {to_steps}")
    lists = [select_timesteps(T, from_steps, spacing)]
    while len(lists[-1]) > to_steps:
        lists.append(lists[-1][1::2])
    return [read_only(a, np.int64) for a in lists]
