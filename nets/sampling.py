"""Reverse-process sampling on the device, driven by diffusion_core's ReverseCoefficients.

One loop serves DDPM (σ² = β̃ or β) and DDIM (any η, any respaced step list): the core reduces
every step to ``x_prev = A_k·x̂0 + B_k·ε̂ + σ_k·z``. All tables are moved to the device once;
the loop does no host work and no syncs per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import diffusion_core as core
from nets.diffusion import Diffusion, as_table

NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, C, H, W) in [-1, 1] (x0 of the final step)
    snapshots: torch.Tensor | None  # (S, B, C, H, W): x_t at the recorded steps, noisiest first
    snapshot_timesteps: list[int]  # the paper step (t+1) of each snapshot; 0 is the final image


class DeviceCoefficients(nn.Module):
    """A ReverseCoefficients table set as device tensors (float64 where supported)."""

    def __init__(self, coeffs: core.ReverseCoefficients):
        super().__init__()
        self.num_steps = len(coeffs.timesteps)
        self.timesteps_host = [int(t) for t in coeffs.timesteps]  # for labels, never in the loop
        self.register_buffer("timesteps", torch.as_tensor(coeffs.timesteps, dtype=torch.long))
        for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                     "x0_coef", "eps_coef", "sigma"):
            self.register_buffer(name, as_table(getattr(coeffs, name)))


def make_coefficients(schedule: core.DiffusionSchedule, sampler: str, steps: int | None = None,
                      eta: float = 0.0, variance: str = "posterior",
                      spacing: str = "trailing") -> core.ReverseCoefficients:
    """The core's step tables for ``sampler`` ("ddpm" or "ddim") over ``steps`` (None = all T)."""
    timesteps = None
    if steps is not None and steps != schedule.num_timesteps:
        timesteps = core.select_timesteps(schedule.num_timesteps, steps, spacing)
    if sampler == "ddpm":
        return core.ddpm_coefficients(schedule, timesteps, variance=variance)
    if sampler == "ddim":
        return core.ddim_coefficients(schedule, timesteps, eta=eta)
    raise ValueError(f"unknown sampler: {sampler!r} (expected 'ddpm' or 'ddim')")


def reverse_step(coeffs: DeviceCoefficients, k: int, diffusion: Diffusion, xt: torch.Tensor,
                 output: torch.Tensor, noise: torch.Tensor | None, clip_x0: bool = True):
    """One step k of the reverse process; mirrors ``diffusion_core.reverse_step``. → (x_prev, x̂0)."""
    t = coeffs.timesteps[k].expand(xt.shape[0])
    x0 = diffusion.predict_x0(xt, t, output)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    # ε̂ recomputed from the (clipped) x̂0, so x_t = √ᾱ x̂0 + √(1-ᾱ) ε̂ holds exactly.
    eps = (xt - coeffs.sqrt_alphas_cumprod[k].to(xt.dtype) * x0) / \
        coeffs.sqrt_one_minus_alphas_cumprod[k].to(xt.dtype)
    x_prev = coeffs.x0_coef[k].to(xt.dtype) * x0 + coeffs.eps_coef[k].to(xt.dtype) * eps
    if noise is not None:
        x_prev = x_prev + coeffs.sigma[k].to(xt.dtype) * noise
    return x_prev, x0


@torch.inference_mode()
def sample(model: nn.Module, diffusion: Diffusion, coeffs: DeviceCoefficients, x_T: torch.Tensor,
           noise_fn: NoiseFn, y: torch.Tensor | None = None, clip_x0: bool = True,
           guidance: float | None = None, num_snapshots: int = 0,
           autocast_dtype: torch.dtype | None = None) -> SampleResult:
    """Run the reverse chain from ``x_T`` (B, C, H, W).

    ``noise_fn(k, like)`` returns the z of step k (callers use a seeded generator; tests pass
    fixed noise). ``guidance`` w applies classifier-free guidance ε_u + w(ε_c − ε_u) with both
    passes in one batched call (needs ``y``). ``num_snapshots`` records that many x_t along the
    chain (evenly spaced, the first being x_T) plus the final image.
    """
    num_steps = coeffs.num_steps
    record = set()
    if num_snapshots:
        record = {round(i * num_steps / num_snapshots) for i in range(num_snapshots)}
    snaps, snap_t = [], []
    x = x_T
    for k in range(num_steps):
        if k in record:
            snaps.append(x.float().clone())
            snap_t.append(coeffs.timesteps_host[k] + 1)
        t = coeffs.timesteps[k].expand(x.shape[0])
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            output = _model_output(model, x, t, y, guidance)
        last = k == num_steps - 1
        x, _ = reverse_step(coeffs, k, diffusion, x, output.to(x.dtype),
                            None if last else noise_fn(k, x), clip_x0)
    # The last step has ᾱ_prev = 1 and σ = 0, so x is x̂0 itself.
    images = x
    if num_snapshots:
        snaps.append(images.float().clone())
        snap_t.append(0)
    return SampleResult(images, torch.stack(snaps) if snaps else None, snap_t)


def _model_output(model, x, t, y, guidance):
    if guidance is None or y is None:
        return model(x, t) if y is None else model(x, t, y)
    null = torch.full_like(y, model.config.num_classes)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)  # Ho & Salimans (2022) eq. 6, w = 1: conditional
