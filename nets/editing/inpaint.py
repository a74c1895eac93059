"""Inpainting: fill the unknown pixels of a digit consistently with the known ones.

RePaint (Lugmayr et al. 2022, Algorithm 1) on the respaced DDPM chain: at every step the unknown
pixels take the model's step x_{τ_{k+1}} ~ p(·|x_{τ_k}) and the known ones a fresh forward sample
q(x_{τ_{k+1}} | x0) of the given digit (at the end: the digit itself); with ``resample`` R > 1 the
merged image jumps back to τ_k through q(x_{τ_k} | x_{τ_{k+1}}) (diffusion_core's forward jump)
and the step is taken again, R times in all, so the two parts have time to agree. The known
pixels of the result are the given uint8 values, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import diffusion_core as core
from nets.diffusion import Diffusion
from nets.pixels import images_to_uint8, to_training_tensor
from nets.progress import Progress
from nets.sampling.chain import step_function
from nets.sampling.settings import ChainOptions, DeviceCoefficients, Network


@dataclass(frozen=True)
class InpaintSettings:
    """``n`` completions over ``steps`` respaced DDPM steps, each step taken ``resample`` times
    (RePaint's R; 1 = plain replacement), with a progress line or not."""

    n: int = 8
    steps: int = 100
    resample: int = 5
    progress: bool = False

    def __post_init__(self):
        for name in ("n", "steps", "resample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@torch.inference_mode()
def inpaint(net: Network, original: np.ndarray, known: np.ndarray, gen: torch.Generator,
            settings: InpaintSettings = InpaintSettings(),
            options: ChainOptions = ChainOptions()) -> np.ndarray:
    """``settings.n`` completions (n, 28, 28) uint8 of the uint8 digit ``original`` (28, 28) whose
    ``known`` (28, 28) bool pixels are kept; ``options`` carry a conditional model's label and
    guidance; ``gen`` (on the network's device) draws every random number."""
    diffusion, device = net.diffusion, net.device
    n, steps, resample = settings.n, settings.steps, settings.resample
    schedule = diffusion.schedule
    table = core.ddpm_coefficients(schedule, core.select_timesteps(schedule.num_timesteps, steps, "trailing"))
    coeffs = DeviceCoefficients(table).to(device)
    step = step_function(net, coeffs, torch.float32, options)
    x0 = to_training_tensor(np.repeat(original[None], n, axis=0), device)  # (n, 1, 28, 28)
    mask = torch.as_tensor(known, device=device).expand_as(x0)
    taus = [int(t) for t in table.timesteps] + [-1]  # τ_0 > ... > τ_{K-1}, then x0
    jumps = [_jump(schedule, taus[k + 1], taus[k]) for k in range(len(taus) - 1)]

    def randn(like):
        return torch.randn(like.shape, generator=gen, device=device)

    x = randn(x0)
    ks = torch.arange(len(table.timesteps), device=device)
    bar = Progress("inpainting step" if settings.progress else None, len(table.timesteps),
                   rate_unit="steps/s")
    for k in range(len(table.timesteps)):
        last = k == len(table.timesteps) - 1
        for r in range(1 if last else resample):
            unknown = step(x, ks[k:k + 1], None if last else randn(x))
            merged = torch.where(mask, _forward(diffusion, x0, taus[k + 1], randn), unknown)
            if r < resample - 1:  # RePaint: back to τ_k through q(x_{τ_k} | x_{τ_{k+1}}), again
                coef, std = jumps[k]
                x = coef * merged + std * randn(merged)
            else:
                x = merged
        bar.update(k + 1)
    bar.close()
    out = images_to_uint8(x)
    out[:, known] = original[known]  # exactly as given
    return out


def _forward(diffusion: Diffusion, x0: torch.Tensor, t: int, randn) -> torch.Tensor:
    """The known pixels at level t: x0 itself at t = -1, else a draw of q(x_t | x0)."""
    if t < 0:
        return x0
    return diffusion.q_sample(x0, torch.full((len(x0),), t, device=x0.device), randn(x0)).float()


def _jump(schedule: core.DiffusionSchedule, s: int, t: int) -> tuple[float, float]:
    """(√(ᾱ_t/ᾱ_s), √(1 - ᾱ_t/ᾱ_s)) of q(x_t | x_s), from the core."""
    moments = core.q_jump_mean_variance(schedule, np.ones(1), s, t)
    return float(moments.mean[0]), float(np.sqrt(moments.variance[0]))
