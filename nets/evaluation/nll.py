"""Bits/dim of real images under a model's variational bound (Ho et al. 2020 eq. 5), every term
from diffusion_core.likelihood in float64; and the two denoisers that bracket every model."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import diffusion_core as core
from nets.diffusion import Diffusion, extract, make_schedule
from nets.pixels import to_training_tensor

DEFAULT_NLL_IMAGES = 16


@dataclass
class NllResult:
    images: int
    bits_per_dim: float  # mean over images
    stderr: float | None  # standard error of that mean over images (None for one image)
    prior_bpd: float  # L_T
    diffusion_bpd: float  # Σ L_{t-1}, t > 1
    decoder_bpd: float  # L_0
    seconds: float


@torch.inference_mode()
def nll_bits_per_dim(model: Callable, diffusion: Diffusion, images: np.ndarray, batch_size: int = 64,
                     seed: int = 0, progress: bool = False) -> NllResult:
    """Bits/dim of uint8 images (N, 28, 28) under the bound L = L_T + Σ L_{t-1} + L_0.

    Data as in Ho et al. (2020) §3.3: pixels scaled to [-1, 1], L_0 the discretised Gaussian
    decoder over 256 bins. One x_t ~ q(x_t|x0) per image and step (seeded), the model's x̂0
    clipped to [-1, 1], p_θ(x_{t-1}|x_t) = N(μ̃(x̂0, x_t), β̃_t) (fixed variance, log β̃ clipped
    at t = 0 as in the core). All terms in float64 from diffusion_core.likelihood.
    """
    schedule = diffusion.schedule
    T = schedule.num_timesteps
    device = diffusion.device  # the model's, where its tables are
    gen = torch.Generator(device=device).manual_seed(seed)
    per_image, parts = [], np.zeros(3)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        x0 = to_training_tensor(np.asarray(images[start:start + batch_size]), device)  # (B,1,H,W)
        x0_np = x0.double().cpu().numpy()
        b = len(x0)
        prior = core.prior_kl(schedule, x0_np).reshape(b, -1).sum(1)  # L_T, nats (B,)
        steps, decoder = np.zeros(b), np.zeros(b)
        for t in reversed(range(T)):
            t_vec = torch.full((b,), t, dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            xt = diffusion.q_sample(x0, t_vec, noise)
            x0_hat = diffusion.predict_x0(xt, t_vec, model(xt, t_vec).float()).clamp(-1.0, 1.0)
            xt_np, t_np = xt.double().cpu().numpy(), np.full(b, t, dtype=np.int64)
            mean = core.q_posterior_mean_variance(schedule, x0_hat.double().cpu().numpy(),
                                                  xt_np, t_np).mean
            log_var = schedule.posterior_log_variance_clipped[t]
            term = core.vb_term(schedule, x0_np, xt_np, t_np, mean, log_var)
            nats = term.reshape(b, -1).sum(1)
            if t == 0:
                decoder += nats
            else:
                steps += nats
        dims = x0[0].numel() * math.log(2.0)
        per_image.append((prior + steps + decoder) / dims)
        parts += [prior.sum() / dims, steps.sum() / dims, decoder.sum() / dims]
        if progress:
            done = start + b
            print(f"NLL: {done}/{len(images)} images, "
                  f"{done / (time.perf_counter() - t0):.2f} images/s", file=sys.stderr, flush=True)
    bpd = np.concatenate(per_image)
    n = len(bpd)
    return NllResult(n, float(bpd.mean()), float(bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else
                     None, *(float(p / n) for p in parts), time.perf_counter() - t0)


def nll_calibration(images: np.ndarray, seed: int, T: int = 1000) -> dict:
    """Bits/dim of real images under the default schedule (linear, T = 1000) for two denoisers
    that bracket every trained model: ε̂ = 0 (knows nothing) and an oracle that is handed x0
    (every KL term vanishes, leaving the bound's floor L_T + L_0)."""
    diffusion = Diffusion(make_schedule("linear", T))
    x0 = to_training_tensor(np.asarray(images))

    def zero(x, t):
        return torch.zeros_like(x)

    def oracle(x, t):  # ε = (x_t − √ᾱ x0)/√(1−ᾱ), Ho et al. (2020) eq. 4 solved for ε
        return ((x - extract(diffusion.sqrt_alphas_cumprod, t, x) * x0)
                / extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x))

    out = {"images": len(images), "timesteps": T, "uniform_over_256_levels": 8.0}
    for name, model in (("eps_zero", zero), ("oracle_x0", oracle)):
        r = nll_bits_per_dim(model, diffusion, images, batch_size=len(images), seed=seed)
        out[name] = {"bits_per_dim": r.bits_per_dim, "prior_bpd": r.prior_bpd,
                     "diffusion_bpd": r.diffusion_bpd, "decoder_bpd": r.decoder_bpd}
    return out
