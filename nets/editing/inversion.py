"""Real digits → x_T by deterministic DDIM inversion, x_T → digits by DDIM, and paths between
latents (slerp). All through the samplers' one loop (`nets.sampling.sample`) on the core's tables."""

from __future__ import annotations

import numpy as np
import torch

import diffusion_core as core
from nets.sampling.chain import sample
from nets.sampling.settings import ChainOptions, DeviceCoefficients, Network


def edit_timesteps(schedule: core.DiffusionSchedule, steps: int) -> np.ndarray:
    """K ascending indices from 0 to T-1 (linspace): inversion starts where decoding ends, at τ_0 = 0."""
    return core.select_timesteps(schedule.num_timesteps, steps, "linspace")


def _zero_noise(_k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like)


def invert(net: Network, x0: torch.Tensor, steps: int,
           options: ChainOptions = ChainOptions()) -> torch.Tensor:
    """x0 (B, 1, 28, 28) in [-1, 1] → the latents x_{T-1} (B, 1, 28, 28), K - 1 inversion steps;
    ``options`` carry the labels and guidance of a conditional model."""
    schedule = net.diffusion.schedule
    table = core.ddim_inversion_coefficients(schedule, edit_timesteps(schedule, steps))
    return _run(net, table, x0, options)


def decode(net: Network, latents: torch.Tensor, steps: int,
           options: ChainOptions = ChainOptions()) -> torch.Tensor:
    """Latents at index T-1 → images in [-1, 1] by DDIM (η = 0) on the same K steps."""
    schedule = net.diffusion.schedule
    table = core.ddim_coefficients(schedule, edit_timesteps(schedule, steps))
    return _run(net, table, latents, options)


def _run(net: Network, table: core.ReverseCoefficients, x: torch.Tensor,
         options: ChainOptions) -> torch.Tensor:
    """A deterministic table (σ = 0) through the samplers' one loop."""
    return sample(net, DeviceCoefficients(table).to(x.device), x, _zero_noise, options).images


def interpolate(a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """(frames, 1, 28, 28): slerp from latent a (1, 28, 28) to b, both ends included."""
    path = core.slerp(a.double().cpu().numpy()[None], b.double().cpu().numpy()[None],
                      np.linspace(0.0, 1.0, frames))  # (F, 1, 1, 28, 28)
    return torch.from_numpy(path[:, 0]).to(a.device, a.dtype)


def round_trip_error(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Per image RMS difference of uint8 images (N, 28, 28), on [0, 1] pixels."""
    diff = (original.astype(np.float64) - reconstruction.astype(np.float64)) / 255.0
    return np.sqrt((diff ** 2).reshape(len(diff), -1).mean(1))
