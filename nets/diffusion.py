"""The torch side of the diffusion: diffusion_core's float64 tables as device tensors.

Nothing here derives a formula. The core computes every coefficient table once in float64; this
module registers them as buffers and combines them linearly. :func:`as_table` is the one place
where a core table (NumPy) becomes a tensor, for the trainer, the samplers' chain and the
distillation loss alike; :func:`extract` gathers a table's rows per sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import diffusion_core as core


def make_schedule(name: str, timesteps: int) -> core.DiffusionSchedule:
    """The core's tables for a named β schedule over T steps (a run's --schedule, --timesteps)."""
    return core.DiffusionSchedule.from_betas(core.make_betas(name, timesteps))


def as_table(array: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """A core table as a tensor (a copy): timestep indices as int64; coefficients as float64
    where the device supports it (MPS does not: float32 there)."""
    array = np.array(array)  # a writable copy
    if array.dtype.kind in "iu":
        return torch.tensor(array, dtype=torch.long, device=device)
    dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    return torch.tensor(array, dtype=dtype, device=device)


def extract(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` reshaped to broadcast over ``like`` (B, ...) and cast to its dtype."""
    return table[t].reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class Diffusion(nn.Module):
    """Forward process, training target and x̂0 for one schedule and objective, on one device.

    Tables are buffers, so ``.to(device)`` moves them once and per-step gathers never leave the
    device. ``t`` is always the array index 0..T-1 (paper step t+1), as in diffusion_core.
    """

    def __init__(self, schedule: core.DiffusionSchedule, objective: core.Objective = "eps",
                 weighting: core.LossWeighting = "uniform",
                 min_snr_gamma: float = core.DEFAULT_MIN_SNR_GAMMA):
        super().__init__()
        self.schedule = schedule
        self.objective = objective
        self.weighting = weighting
        weights = core.loss_weights(schedule, objective, weighting, min_snr_gamma)
        self.register_buffer("loss_weight", as_table(weights), persistent=False)
        self.num_timesteps = schedule.num_timesteps
        tables = core.objective_tables(schedule, objective)
        for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
            self.register_buffer(name, as_table(getattr(schedule, name)), persistent=False)
        for name in ("target_x0_coef", "target_eps_coef", "x0_from_xt_coef", "x0_from_output_coef"):
            self.register_buffer(name, as_table(getattr(tables, name)), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the tables are (``.to(device)`` moved them)."""
        return self.sqrt_alphas_cumprod.device

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (Ho et al. 2020 eq. 4), coefficients from the core."""
        return (extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """What the network regresses: ε, x0 or v, as the core's objective tables say."""
        return extract(self.target_x0_coef, t, x0) * x0 + extract(self.target_eps_coef, t, x0) * noise

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x̂0 from the network output under this objective."""
        return extract(self.x0_from_xt_coef, t, xt) * xt + extract(self.x0_from_output_coef, t, xt) * output

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error between target and prediction (a scalar): the seed's objective, or
        with min-SNR-γ weighting the mean over the batch of the core's weight at t times each
        image's MSE."""
        xt = self.q_sample(x0, t, noise)
        pred = model(xt, t) if y is None else model(xt, t, y)
        target = self.training_target(x0, t, noise)
        squared = (pred.float() - target.float()) ** 2
        if self.weighting == "uniform":
            return torch.mean(squared)
        per_image = squared.flatten(1).mean(1)  # (B,)
        return torch.mean(self.loss_weight[t].to(per_image.dtype) * per_image)
