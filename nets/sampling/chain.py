"""The reverse chain on the device, driven by diffusion_core's ReverseCoefficients.

One loop serves DDPM (σ² = β̃ or β), DDIM (any η, any respaced step list) and the DPM-Solver++
multistep solvers: the core reduces every step to
``x_prev = A_k·x̂0 + B_k·ε̂ + C_k·x̂0_{k-1} + D_k·x̂0_{k-2} + σ_k·z`` (C = D = 0 for the one-step
samplers). All tables are moved to the device once; the loop does no host work and no syncs per
step. What it takes is bundled in :mod:`nets.sampling.settings`.

Speed (measured in ``benchmarks/sample_speed.py``, docs/benchmarks.md). Before the loop,
:func:`sample` gathers every per-step coefficient (the objective's x̂0 pair at τ_k, √ᾱ, √(1-ᾱ),
A, B, σ, C, D) into one (K, 9) table in the working dtype, so a step selects one row with a device
index: no per-step gathers, float64 casts, host→device copies or syncs. With
``cuda_graph=True`` one step (network, guidance, update) is captured as a CUDA graph and
replayed; the noise z is still drawn eagerly by ``noise_fn`` (the same calls, in the same order,
on the same generator as the eager loop) and copied into the graph's input, so graph and eager
runs give the same images and leave the generator in the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from nets.diffusion import Diffusion
from nets.fields import ConfigError
from nets.progress import Progress
from nets.sampling.settings import ChainOptions, DeviceCoefficients, Network

NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, C, H, W) in [-1, 1] (x0 of the final step)
    snapshots: torch.Tensor | None  # (S, B, C, H, W): x_t at the recorded steps, noisiest first
    snapshot_timesteps: list[int]  # the paper step (t+1) of each snapshot; 0 is the final image


class _StepCoefficients(NamedTuple):
    """The scalars of one step k, each broadcastable against x (B, C, H, W), in x's dtype."""

    x0_from_xt: torch.Tensor  # x̂0 = x0_from_xt·x_t + x0_from_output·output (objective tables at τ_k)
    x0_from_output: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor  # √ᾱ at τ_k
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # √(1-ᾱ) at τ_k
    x0_coef: torch.Tensor  # A_k
    eps_coef: torch.Tensor  # B_k
    sigma: torch.Tensor  # σ_k
    x0_prev_coef: torch.Tensor  # C_k (multistep: x̂0 of step k-1)
    x0_prev2_coef: torch.Tensor  # D_k (multistep: x̂0 of step k-2)


def _update(xt: torch.Tensor, output: torch.Tensor, noise: torch.Tensor | None,
            c: _StepCoefficients, clip_x0: bool,
            history: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_prev = A·x̂0 + B·ε̂ (+ C·x̂0_{k-1} + D·x̂0_{k-2}) + σ·z from the network output; the one
    copy of the step's math. ``history``: the clipped x̂0 of steps k-1 and k-2 (multistep)."""
    x0 = c.x0_from_xt * xt + c.x0_from_output * output  # as nets.diffusion.Diffusion.predict_x0
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    # ε̂ recomputed from the (clipped) x̂0, so x_t = √ᾱ x̂0 + √(1-ᾱ) ε̂ holds exactly.
    eps = (xt - c.sqrt_alphas_cumprod * x0) / c.sqrt_one_minus_alphas_cumprod
    x_prev = c.x0_coef * x0 + c.eps_coef * eps  # DDIM eq. 12 / Ho et al. (2020) eq. 7 via the core
    if history is not None:  # DPM-Solver++ (diffusion_core.multistep) via the core's C, D
        x_prev = x_prev + c.x0_prev_coef * history[0] + c.x0_prev2_coef * history[1]
    if noise is not None:
        x_prev = x_prev + c.sigma * noise
    return x_prev, x0


def _step_table(coeffs: DeviceCoefficients, diffusion: Diffusion, dtype: torch.dtype) -> torch.Tensor:
    """(K, 9) in ``dtype``: row k holds the fields of ``_StepCoefficients`` for step k.

    Each float64 entry is rounded to ``dtype`` once, as a per-step gather and cast would round
    it, so the table changes no result.
    """
    t = coeffs.timesteps
    columns = (diffusion.x0_from_xt_coef[t], diffusion.x0_from_output_coef[t],
               coeffs.sqrt_alphas_cumprod, coeffs.sqrt_one_minus_alphas_cumprod,
               coeffs.x0_coef, coeffs.eps_coef, coeffs.sigma, coeffs.x0_prev_coef,
               coeffs.x0_prev2_coef)
    return torch.stack([c.to(dtype) for c in columns], dim=1)


@dataclass(frozen=True)
class _Step:
    """One step of a chain: the network, the (K, 9) step table, the timesteps and the options."""

    net: Network
    table: torch.Tensor
    timesteps: torch.Tensor
    options: ChainOptions

    def __call__(self, x: torch.Tensor, k: torch.Tensor, noise: torch.Tensor | None,
                 history: tuple | None = None):
        """Step k (a (1,) long device tensor) of the chain: network, guidance, update. → x_prev,
        or (x_prev, x̂0) for a multistep sampler (``history`` given)."""
        net, options = self.net, self.options
        t = self.timesteps.index_select(0, k).expand(x.shape[0])  # (B,)
        with torch.autocast(x.device.type, dtype=net.autocast_dtype or torch.bfloat16,
                            enabled=net.autocast_dtype is not None, cache_enabled=False):
            output = _model_output(net.model, x, t, options.y, options.guidance)
        c = _StepCoefficients(*self.table.index_select(0, k).unbind(1))  # nine (1,) tensors
        x_prev, x0 = _update(x, output.to(x.dtype), noise, c, options.clip_x0, history)
        return x_prev if history is None else (x_prev, x0)


class _CudaGraphStep:
    """One sampler step captured as a CUDA graph; x, k and z are its static input buffers.

    Only the network and the update are captured. z is drawn by the caller (eagerly, by
    ``noise_fn``) and copied in, so the generator sees exactly the eager loop's draws. The last
    step (no noise) runs eagerly, as in the eager loop.
    """

    def __init__(self, step: Callable, x_T: torch.Tensor):
        self.step = step
        self.x = x_T.clone()  # (B, C, H, W): input and output of the graph
        self.z = torch.zeros_like(x_T)
        self.k = torch.zeros(1, dtype=torch.long, device=x_T.device)
        side = torch.cuda.Stream(x_T.device)
        side.wait_stream(torch.cuda.current_stream(x_T.device))
        with torch.cuda.stream(side):  # warm-up off the capture: lazy inits, library handles
            for _ in range(2):
                step(self.x, self.k, self.z)  # results discarded; the generator is not used
        torch.cuda.current_stream(x_T.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records kernels; runs nothing
            self.x.copy_(step(self.x, self.k, self.z))

    def __call__(self, x: torch.Tensor, k: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if x.data_ptr() != self.x.data_ptr():
            self.x.copy_(x)
        self.k.copy_(k)
        if noise is None:
            return self.step(self.x, self.k, None)
        self.z.copy_(noise)
        self.graph.replay()
        return self.x


def step_function(net: Network, coeffs: DeviceCoefficients, dtype: torch.dtype,
                  options: ChainOptions = ChainOptions()) -> Callable:
    """``step(x, k, noise) → x_prev``: one step k (a (1,) long device tensor) of a one-step table,
    for loops that do more between steps than :func:`sample` (inpainting's replacement and
    resampling); the same network call, guidance and update as :func:`sample`."""
    return _Step(net, _step_table(coeffs, net.diffusion, dtype), coeffs.timesteps, options)


@torch.inference_mode()
def sample(net: Network, coeffs: DeviceCoefficients, x_T: torch.Tensor, noise_fn: NoiseFn,
           options: ChainOptions = ChainOptions()) -> SampleResult:
    """Run the reverse chain from ``x_T`` (B, C, H, W).

    ``noise_fn(k, like)`` returns the z of step k (callers use a seeded generator; tests pass
    fixed noise); it is not called for the last step, nor, for the multistep solvers, where
    σ_k = 0 (every step of the ODE solvers dpmpp-2m/3m). ``options.guidance`` w applies
    classifier-free guidance ε_u + w(ε_c − ε_u) with both passes in one batched call (needs
    ``options.y``). ``options.num_snapshots`` records that many x_t along the chain (evenly
    spaced, the first being x_T) plus the final image. The network runs under
    ``net.autocast_dtype``; the update stays in x_T's dtype. ``options.cuda_graph`` (CUDA tensors
    only) replays one captured step instead of launching its kernels one by one; the images are
    the same (one-step samplers only). A multistep table (DPM-Solver++) carries the last two
    clipped x̂0 from step to step: the same loop, with the history the core's C and D columns weigh.
    """
    multistep, num_steps = coeffs.history_length > 0, coeffs.num_steps
    check_cuda_graph(options.cuda_graph, multistep, x_T.device)
    record = snapshot_steps(num_steps, options.num_snapshots)
    snaps, snap_t = [], []
    step = step_function(net, coeffs, x_T.dtype, options)
    if options.cuda_graph:
        step = _CudaGraphStep(step, x_T)
    ks = torch.arange(num_steps, device=x_T.device)  # ks[k:k+1] indexes step k without a copy
    x = x_T
    history = (torch.zeros_like(x_T), torch.zeros_like(x_T)) if multistep else None
    bar = Progress(options.progress, num_steps, rate_unit="steps/s")
    for k in range(num_steps):
        bar.update(k)
        if k in record:
            snaps.append(x.float().clone())
            snap_t.append(coeffs.timesteps_host[k] + 1)
        last = k == num_steps - 1
        if not multistep:
            x = step(x, ks[k:k + 1], None if last else noise_fn(k, x))
            continue
        noise = noise_fn(k, x) if coeffs.noisy_steps[k] else None
        x, x0 = step(x, ks[k:k + 1], noise, history)
        history = (x0, history[0])
    bar.update(num_steps)
    bar.close()
    # The last step has ᾱ_prev = 1 and σ = 0, so x is x̂0 itself.
    if options.num_snapshots:
        snaps.append(x.float().clone())
        snap_t.append(0)
    return SampleResult(x, torch.stack(snaps) if snaps else None, snap_t)


def check_cuda_graph(cuda_graph: bool, multistep: bool, device: torch.device) -> None:
    """The one check of ``cuda_graph``: it replays one captured step of a one-step table on CUDA."""
    if cuda_graph and multistep:
        raise ConfigError("cuda_graph", "supports ddpm and ddim only (one-step tables), not a "
                          "multistep solver")
    if cuda_graph and device.type != "cuda":
        raise ConfigError("cuda_graph", f"needs a CUDA device, got x_T on {device}")


def snapshot_steps(num_steps: int, num_snapshots: int) -> set[int]:
    """The steps before which the chain records x_t: ``num_snapshots`` evenly spaced, x_T first."""
    return {round(i * num_steps / num_snapshots) for i in range(num_snapshots)} if num_snapshots else set()


def _model_output(model, x, t, y, guidance):
    if guidance is None or y is None:
        return model(x, t) if y is None else model(x, t, y)
    null = torch.full_like(y, model.config.num_classes)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)  # Ho & Salimans (2022) eq. 6, w = 1: conditional
