"""The variational bound of Ho et al. (2020) eq. 5, term by term, in nats per element.

    L = L_T + Σ_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) ‖ N(0, I))                      → `prior_kl`
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t))   → `vb_term` at index t ≥ 1
    L_0     = -log p_θ(x0 | x_1), discretised Gaussian         → `vb_term` at index 0

Index t is the paper's step t+1, so `vb_term` at index 0 is the decoder term L_0. Bits per
dimension: sum the terms, average over the non-batch axes and divide by ln 2
(`nats_to_bits_per_dim`). Data results come back in the inputs' floating dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffusion_core._inputs import align, as_data, as_step_index, broadcast_data
from diffusion_core.forward import q_mean_variance
from diffusion_core.posterior import q_posterior_mean_variance
from diffusion_core.schedule import DiffusionSchedule

_HALF_BIN = 1.0 / 255.0  # 8-bit data on [-1, 1]: bins of width 2/255 around each level
_MIN_PROB = 1e-12  # improved-diffusion's floor under the bin probability before the log


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> np.ndarray:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats; arrays broadcast."""
    (m1, lv1, m2, lv2), dtype = as_data(mean1=mean1, logvar1=logvar1, mean2=mean2,
                                        logvar2=logvar2)
    broadcast_data(m1, lv1, m2, lv2)
    diff_sq = np.square(m1 - m2)
    with np.errstate(over="ignore", invalid="ignore"):  # 0·inf only where the means agree
        mean_term = np.where(diff_sq == 0, 0.0, diff_sq * np.exp(-lv2))
        # closed-form Gaussian KL: ½(-1 + lv2 - lv1 + e^{lv1-lv2} + (m1-m2)²e^{-lv2})
        kl = 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + mean_term)
    return kl.astype(dtype, copy=False)


def approx_standard_normal_cdf(x: Any) -> np.ndarray:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³))) (Page 1977, as in improved-diffusion);
    absolute error below 2e-4. Elementwise, the input's floating dtype."""
    (x,), dtype = as_data(x=x)
    return _approx_cdf(x).astype(dtype, copy=False)


def _approx_cdf(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of Φ on float64 (±inf give 0 and 1)."""
    with np.errstate(over="ignore"):
        return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Any, means: Any, log_scales: Any) -> np.ndarray:
    """log P(x) of 8-bit data x ∈ {-1, -1 + 2/255, ..., 1} under N(means, e^{2·log_scales})
    discretised into bins of width 2/255, the edge bins extended to ±inf (Ho et al. 2020 §3.3).

    Uses `approx_standard_normal_cdf` and floors each bin probability at 1e-12, like
    improved-diffusion; log_scales below log(smallest normal float64) are raised to it so the
    result is never NaN. Arrays broadcast; returns the inputs' floating dtype.
    """
    (x, means, log_scales), dtype = as_data(x=x, means=means, log_scales=log_scales)
    broadcast_data(x, means, log_scales)
    centered = x - means
    inv_stdv = np.exp(-np.maximum(log_scales, math.log(np.finfo(np.float64).tiny)))
    with np.errstate(over="ignore"):  # an overflow to ±inf gives Φ = 0 or 1
        cdf_plus = _approx_cdf(inv_stdv * (centered + _HALF_BIN))
        cdf_min = _approx_cdf(inv_stdv * (centered - _HALF_BIN))
    log_cdf_plus = np.log(np.maximum(cdf_plus, _MIN_PROB))  # lowest bin: (-inf, -1 + 1/255]
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, _MIN_PROB))  # top: [1 - 1/255, inf)
    log_cdf_delta = np.log(np.maximum(cdf_plus - cdf_min, _MIN_PROB))  # Ho et al. (2020) eq. 13
    log_probs = np.where(x < -0.999, log_cdf_plus,
                         np.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
    return log_probs.astype(dtype, copy=False)


def prior_kl(schedule: DiffusionSchedule, x0: Any) -> np.ndarray:
    """L_T = KL(q(x_T | x0) ‖ N(0, I)) elementwise in nats; x0 (B, ...), returns its shape/dtype."""
    (x0_64,), dtype = as_data(x0=x0)
    last = np.int64(schedule.num_timesteps - 1)
    mean, _, log_variance = q_mean_variance(schedule, x0_64, last)
    return normal_kl(mean, log_variance, 0.0, 0.0).astype(dtype, copy=False)  # Ho et al. eq. 5


def vb_term(
    schedule: DiffusionSchedule,
    x0: Any,
    xt: Any,
    t: Any,
    model_mean: Any,
    model_log_variance: Any,
) -> np.ndarray:
    """The bound term at index t, nats per element: L_{t-1} = KL(q(x_{t-1}|x_t,x0) ‖
    N(model_mean, e^model_log_variance)) for t ≥ 1, and the decoder NLL
    L_0 = -log p(x0 | x_1) with the discretised Gaussian at t = 0 (Ho et al. 2020 eq. 5).

    x0, xt, model_mean, model_log_variance: arrays that broadcast, (B, ...); t: int (B,) or
    scalar. Returns the broadcast shape in the inputs' floating dtype.
    """
    (x0, xt, mean, log_variance), dtype = as_data(
        x0=x0, xt=xt, model_mean=model_mean, model_log_variance=model_log_variance)
    t = as_step_index(t, schedule.num_timesteps)
    t_aligned, shape = align(t, x0, xt, mean, log_variance)
    true_mean, _, true_log_variance = q_posterior_mean_variance(schedule, x0, xt, t)
    kl = normal_kl(true_mean, true_log_variance, mean, log_variance)  # Ho et al. eq. 5 L_{t-1}
    decoder_nll = -discretized_gaussian_log_likelihood(
        x0, mean, 0.5 * log_variance)  # Ho et al. (2020) eq. 5 L_0, eq. 13
    terms = np.where(t_aligned == 0, decoder_nll, kl)
    return np.broadcast_to(terms, shape).astype(dtype)


def nats_to_bits_per_dim(nats: Any) -> np.ndarray:
    """Per-element nats (B, ...) → bits/dim (B,): the mean over the non-batch axes over ln 2.

    A 1-D input is taken as one value per batch element. Returns float64."""
    (nats,), _ = as_data(nats=nats)
    if nats.ndim == 0:
        raise ValueError("nats must have a leading batch axis, got a scalar")
    axes = tuple(range(1, nats.ndim))
    return np.mean(nats, axis=axes) / math.log(2.0) if axes else nats / math.log(2.0)
