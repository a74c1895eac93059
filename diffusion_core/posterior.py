"""The forward-process posterior q(x_{t-1} | x_t, x_0) of Ho et al. (2020) eq. 6-7.

At index t = 0 (paper step 1) the posterior is the point mass at x0: mean x0, variance 0; its
log-variance is reported clipped to index 1's (see `DiffusionSchedule`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_core._inputs import align, as_data, as_step_index
from diffusion_core.forward import GaussianMoments
from diffusion_core.schedule import DiffusionSchedule


def q_posterior_mean_variance(
    schedule: DiffusionSchedule, x0: Any, xt: Any, t: Any
) -> GaussianMoments:
    """The moments of q(x_{t-1} | x_t, x0) = N(μ̃_t, β̃_t I).

    x0, xt: arrays that broadcast, (B, ...); t: int array (B,) or scalar. Returns the mean in the
    inputs' dtype, `posterior_variance` and `posterior_log_variance_clipped` (float64), all of
    the broadcast shape.
    """
    (x0, xt), dtype = as_data(x0=x0, xt=xt)
    t, shape = align(as_step_index(t, schedule.num_timesteps), x0, xt)
    # Ho et al. (2020) eq. 7: μ̃_t(x_t, x0) = coef1·x0 + coef2·x_t
    mean = schedule.posterior_mean_coef1[t] * x0 + schedule.posterior_mean_coef2[t] * xt
    return GaussianMoments(
        mean=np.broadcast_to(mean, shape).astype(dtype),
        variance=np.broadcast_to(schedule.posterior_variance[t], shape).astype(np.float64),
        log_variance=np.broadcast_to(
            schedule.posterior_log_variance_clipped[t], shape).astype(np.float64),
    )
