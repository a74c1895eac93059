"""The math of consistency models (Song et al. 2023, "Consistency Models") in this project's VP
terms, tuned from a trained diffusion model as in ECT (Geng et al. 2024, "Consistency Models Made
Easy").

**The path in angles.** With α_t = √ᾱ_t and σ_t = √(1-ᾱ_t), x_t = α_t x0 + σ_t ε lies on the VP
path at the angle θ_t = atan2(σ_t, α_t) ∈ (0, π/2]: α_t = cos θ_t, σ_t = sin θ_t. EDM's noise
level (Karras et al. 2022) is σ_t/α_t = tan θ_t.

**The parameterisation** (why this form): a consistency function maps every point of a
probability-flow ODE trajectory to its end at the smallest time t_min (index 0 here, ᾱ_0 = 1 - β_1),
f(x_t, t) = x_{t_min}, with the boundary condition f(x, t_min) = x built in. Here

    f_θ(x_t, t) = c_skip(t)·x_t + c_out(t)·F_θ(x_t, t),
    c_skip(t) = sin θ_min / sin θ_t = σ_min/σ_t,   c_out(t) = sin(θ_t − θ_min) / sin θ_t,

i.e. one DDIM (η = 0) jump from t to t_min with the network's x̂0 = F_θ as its x0 prediction
(``diffusion_core.distillation.ddim_jump_coefficients`` at s = t_min). At t = t_min the angles
are equal, so c_skip = 1 and c_out = sin 0 = 0 exactly: the boundary holds to the last bit for
every schedule, with no σ_data to choose (EDM's σ-form needs one and is exact only at σ = σ_min
in its own units). Away from t_min, c_skip → 0 and c_out → α_min ≈ 1: f is the network's x̂0, so
a tuning that starts from a trained diffusion model starts at its x̂0 (ECT's point: at Δt → t the
consistency loss is the diffusion loss). Every function F is allowed: the exact consistency
function is F* = (f* − c_skip x_t)/c_out, the progressive-distillation target of a teacher that
solves the ODE exactly from t to t_min.

**Consistency training pairs** (ECT's mapping, in EDM noise levels s = tan θ): a time t and
r < t with s_r = s_t·(1 − q^-(a+1)·(1 + k·sigmoid(−b·s_t))), clipped at 0, at stage a; the
stage grows over the tuning, so Δt = t − r halves each stage. Discretised to indices: r is the
largest index whose s is at most s_r, kept in [t_min, t − 1]. At stage 0 most r are t_min, whose
target is the data point itself; the loss of one pair is

    w(t, r)·(√(‖f_θ(x_t, t) − f_θ⁻(x_r, r)‖² + c²) − c),   w = 1/(s_t − s_r),

(pseudo-Huber distance; θ⁻ the same weights without gradient; c = 0.00054·√d, Song & Dhariwal
2023, for d numbers per image). Consistency training takes x_r = α_r x0 + σ_r ε with the ε of
x_t; consistency distillation takes x_r one ODE step from x_t with a teacher's x̂0. The two
differ by A(t, r)·(x0 − x̂0) = O(Δt) per sample, and their average over x0 given x_t is the same
when x̂0 = E[x0 | x_t] (tests/test_core_consistency.py measures both).

**Multistep sampling** (Song et al. 2023, Algorithm 1, with an exact re-noising): x ← f(x_T, T);
then for each later time τ, x_τ = √(ᾱ_τ/ᾱ_min)·x + √(1 − ᾱ_τ/ᾱ_min)·z (q(x_τ | x_{t_min}) exactly)
and x ← f(x_τ, τ). Written as the samplers' step table (``ReverseCoefficients``):
f = c_skip·x_t + c_out·x̂0 = (c_skip·α_t + c_out)·x̂0 + c_skip·σ_t·ε̂, so step k is
x_next = m_k·f + n_k·z with m_k, n_k the re-noising to the next time (1 and 0 after the last).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffusion_core._inputs import as_count, as_data, as_real, as_step_index, as_step_sequence, read_only
from diffusion_core.editing import q_jump_mean_variance
from diffusion_core.respacing import select_timesteps
from diffusion_core.reverse import ReverseCoefficients
from diffusion_core.schedule import DiffusionSchedule

T_MIN = 0  # the boundary of the consistency function: the least noisy index
PSEUDO_HUBER_SCALE = 0.00054  # c = 0.00054·√d (Song & Dhariwal 2023, §3.3)
ECT_Q, ECT_K, ECT_B = 2.0, 8.0, 1.0  # ECT's shrink factor per stage and its sigmoid (Geng et al. 2024)
ECT_P_MEAN, ECT_P_STD = -1.1, 2.0  # EDM's log-normal of the noise level, ECT's choice of t
# the EDM noise level of the second call of two: the best measured on MNIST (docs/results.md,
# a screen of τ after a 3-minute tuning: FD 86.6 at s = 1.59 (index 350 of the linear schedule)
# against 101.0 at the trailing spacing's index 499 and 91.7 at 250)
SECOND_CALL_LEVEL = 1.59


def vp_angles(schedule: DiffusionSchedule) -> np.ndarray:
    """θ_t = atan2(√(1-ᾱ_t), √ᾱ_t) of every index, (T,) float64 in (0, π/2]."""
    return np.arctan2(schedule.sqrt_one_minus_alphas_cumprod, schedule.sqrt_alphas_cumprod)


def edm_noise_levels(schedule: DiffusionSchedule) -> np.ndarray:
    """s_t = σ_t/α_t = tan θ_t of every index (EDM's σ), (T,) float64, strictly increasing
    (finite at ᾱ = 0: tan of the float nearest π/2)."""
    return np.tan(vp_angles(schedule))


def scalings_at_angles(theta: Any, theta_min: float) -> tuple[np.ndarray, np.ndarray]:
    """(c_skip, c_out) at angles ``theta`` ≥ ``theta_min`` > 0 (module docstring), float64."""
    theta = np.asarray(theta, dtype=np.float64)
    if not 0 < theta_min <= math.pi / 2 or np.any(theta < theta_min) or np.any(theta > math.pi / 2):
        raise ValueError(f"angles must lie in [theta_min, pi/2] with theta_min in (0, pi/2], got "
                         f"theta_min = {theta_min!r}")
    return np.sin(theta_min) / np.sin(theta), np.sin(theta - theta_min) / np.sin(theta)


def consistency_scalings(schedule: DiffusionSchedule, t: Any,
                         t_min: int = T_MIN) -> tuple[np.ndarray, np.ndarray]:
    """(c_skip, c_out) float64 at indices ``t`` ≥ ``t_min``: f = c_skip·x_t + c_out·F, with
    c_skip = 1 and c_out = 0 exactly at t = t_min."""
    t, t_min = _indices_from(schedule, t, t_min)
    theta = vp_angles(schedule)
    return scalings_at_angles(theta[t], float(theta[t_min]))


def consistency_function(schedule: DiffusionSchedule, xt: Any, t: Any, x0_pred: Any,
                         t_min: int = T_MIN) -> np.ndarray:
    """f = c_skip(t)·x_t + c_out(t)·x̂0 for a batch: ``xt``, ``x0_pred`` (B, ...), ``t`` (B,) or a
    scalar. Returns the data's floating dtype."""
    (xt, x0_pred), dtype = as_data(xt=xt, x0_pred=x0_pred)
    c_skip, c_out = consistency_scalings(schedule, t, t_min)
    shape = c_skip.shape + (1,) * (xt.ndim - c_skip.ndim)
    return (c_skip.reshape(shape) * xt + c_out.reshape(shape) * x0_pred).astype(dtype, copy=False)


def ect_pair_timesteps(schedule: DiffusionSchedule, t: Any, stage: int, q: float = ECT_Q, k: float = ECT_K,
                       b: float = ECT_B, t_min: int = T_MIN) -> np.ndarray:
    """r (int64, ``t``'s shape) for each index t > t_min at ``stage`` (module docstring): the
    largest index whose EDM noise level is at most s_t·(1 − q^-(stage+1)·(1 + k·sigmoid(−b·s_t))),
    kept in [t_min, t − 1]."""
    t, t_min = _indices_from(schedule, t, t_min)
    if np.any(t <= t_min):
        raise ValueError(f"every t must lie above t_min = {t_min} (at t_min the consistency "
                         f"function is the identity: there is no pair)")
    stage = as_count("stage", stage, minimum=0)
    q = as_real("q", q, 1.0, math.inf, low_open=True, high_open=True)
    k = as_real("k", k, 0.0, math.inf, low_open=False, high_open=True)
    b = as_real("b", b, 0.0, math.inf, low_open=False, high_open=True)
    s = edm_noise_levels(schedule)
    s_t = s[t]
    shrink = q ** -(stage + 1.0) * (1.0 + k / (1.0 + np.exp(np.minimum(b * s_t, 700.0))))
    s_r = np.maximum(s_t * (1.0 - shrink), 0.0)
    r = np.searchsorted(s, s_r, side="right") - 1
    return np.clip(r, t_min, t - 1).astype(np.int64)


def consistency_weights(schedule: DiffusionSchedule, t: Any, r: Any) -> np.ndarray:
    """w(t, r) = 1/(s_t − s_r), float64, for index pairs r < t (ECT's weighting: the loss per
    unit of noise level, so that a shrinking Δt keeps its scale)."""
    t = as_step_index(t, schedule.num_timesteps)
    r = as_step_index(r, schedule.num_timesteps)
    if np.any(r >= t):
        raise ValueError("a consistency pair needs r < t for every pair")
    s = edm_noise_levels(schedule)
    return 1.0 / (s[t] - s[r])


def pseudo_huber_scale(numbers_per_image: int) -> float:
    """c = 0.00054·√d of the pseudo-Huber distance for images of d numbers."""
    return PSEUDO_HUBER_SCALE * math.sqrt(as_count("numbers_per_image", numbers_per_image))


def pseudo_huber(difference: Any, c: float) -> np.ndarray:
    """√(‖Δ‖² + c²) − c per image: ``difference`` (B, ...) → (B,) float64; ≈ ‖Δ‖²/(2c) for small
    Δ and ‖Δ‖ − c for large. Computed as ‖Δ‖²/(√(‖Δ‖² + c²) + c), exact where Δ ≪ c."""
    ((difference,), _) = as_data(difference=difference)
    if difference.ndim == 0:
        raise ValueError("difference must have a batch axis: (B, ...) differences, one per image")
    c = as_real("c", c, 0.0, math.inf, low_open=False, high_open=True)
    sq = np.sum(difference.reshape(len(difference), -1) ** 2, axis=1)
    return sq / (np.sqrt(sq + c * c) + c) if c else np.sqrt(sq)


def lognormal_timestep_table(schedule: DiffusionSchedule, p_mean: float = ECT_P_MEAN,
                             p_std: float = ECT_P_STD, t_min: int = T_MIN) -> np.ndarray:
    """(T,) int64 indices in (t_min, T): entry u is the index of the quantile (u + ½)/T of EDM's
    log-normal noise level, log s ~ N(p_mean, p_std²), each index owning the noise levels between
    the geometric midpoints to its neighbours. Indexing it with a uniform draw over 0..T-1 (the
    trainer's) draws t from the log-normal, as ECT does, on the schedule's indices."""
    T = schedule.num_timesteps
    _indices_from(schedule, 0, t_min)
    if T - t_min < 2:
        raise ValueError(f"a schedule of T = {T} has no index above t_min = {t_min}")
    p_mean = as_real("p_mean", p_mean, -math.inf, math.inf, low_open=True, high_open=True)
    p_std = as_real("p_std", p_std, 0.0, math.inf, low_open=True, high_open=True)
    log_s = np.log(edm_noise_levels(schedule))[t_min + 1:]
    upper_edges = np.append(0.5 * (log_s[1:] + log_s[:-1]), np.inf)  # the last index takes the tail
    cdf = np.array([0.5 * math.erfc(-(e - p_mean) / (p_std * math.sqrt(2.0))) for e in upper_edges])
    quantiles = (np.arange(T) + 0.5) / T
    owner = np.minimum(np.searchsorted(cdf, quantiles, side="left"), len(log_s) - 1)
    return read_only(owner + t_min + 1, np.int64)


def consistency_timesteps(schedule: DiffusionSchedule, calls: int, second_level: float = SECOND_CALL_LEVEL,
                          t_min: int = T_MIN) -> np.ndarray:
    """The ascending times of ``calls``-call consistency sampling: the first call at T − 1, the
    others evenly spaced (as trailing spacing) over the indices above t_min up to τ₂, the index
    below T − 1 whose EDM noise level is nearest ``second_level`` (the second call of two is at
    τ₂). Never t_min (f is the identity there); where the calls do not fit below τ₂, trailing
    spacing over (t_min, T − 1]."""
    T = schedule.num_timesteps
    calls = as_count("calls", calls)
    _indices_from(schedule, 0, t_min)
    available = T - 1 - t_min  # the indices t_min + 1 .. T − 1
    if calls > available:
        raise ValueError(f"{calls} calls need {calls} distinct indices above t_min = {t_min}; a "
                         f"schedule of T = {T} has {available}")
    level = as_real("second_level", second_level, 0.0, math.inf, low_open=True, high_open=True)
    if calls == 1:
        return read_only([T - 1], np.int64)
    log_s = np.log(edm_noise_levels(schedule)[t_min + 1:T - 1])
    span = 1 + int(np.argmin(np.abs(log_s - math.log(level))))  # τ₂ − t_min
    if calls - 1 > span:
        return read_only(t_min + 1 + select_timesteps(available, calls, "trailing"), np.int64)
    k = np.arange(1, calls, dtype=np.int64)
    later = t_min + (2 * k * span + (calls - 1)) // (2 * (calls - 1))  # round(k·span/(calls − 1))
    return read_only(np.append(later, T - 1), np.int64)


def consistency_coefficients(schedule: DiffusionSchedule, timesteps: Any,
                             t_min: int = T_MIN) -> ReverseCoefficients:
    """The samplers' step table of multistep consistency sampling over the ascending indices
    ``timesteps`` (module docstring): in sampling order, step k evaluates f at τ_k and re-noises
    the result to τ_{k+1} (after the last step: the output x_{t_min}, no noise)."""
    tau = as_step_sequence(timesteps, schedule.num_timesteps)
    _indices_from(schedule, tau, t_min)
    down = tau[::-1]
    c_skip, c_out = consistency_scalings(schedule, down, t_min)
    alpha = schedule.sqrt_alphas_cumprod[down]
    sigma = schedule.sqrt_one_minus_alphas_cumprod[down]
    mean_coef, noise_std = np.ones(len(down)), np.zeros(len(down))
    for k, nxt in enumerate(down[1:]):  # re-noise x_{t_min} to the next time: q(x_τ | x_{t_min})
        jump = q_jump_mean_variance(schedule, 1.0, t_min, int(nxt))
        mean_coef[k], noise_std[k] = float(jump.mean), math.sqrt(float(jump.variance))
    return ReverseCoefficients(
        timesteps=down, sqrt_alphas_cumprod=alpha, sqrt_one_minus_alphas_cumprod=sigma,
        x0_coef=mean_coef * (c_skip * alpha + c_out), eps_coef=mean_coef * c_skip * sigma, sigma=noise_std)


def _indices_from(schedule: DiffusionSchedule, t: Any, t_min: Any) -> tuple[np.ndarray, int]:
    """``t`` as int64 indices and ``t_min`` as an int, every t at or above t_min."""
    T = schedule.num_timesteps
    if isinstance(t_min, bool) or not isinstance(t_min, int | np.integer) or not 0 <= t_min < T:
        raise ValueError(f"t_min must be an integer index in [0, {T - 1}], got {t_min!r}")
    t = as_step_index(t, T)
    if np.any(t < t_min):
        raise ValueError(f"every t must be at or above t_min = {t_min}")
    return t, int(t_min)
