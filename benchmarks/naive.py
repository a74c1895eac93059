"""The baselines: sampling and training written the way tutorials write them.

They compute the same numbers as the project's path (the tests check the sampler to float
tolerance) and differ only in how the work reaches the device:

* :func:`naive_sample` loops over the steps in Python, recomputes every coefficient table on the
  host at every step (NumPy), converts the step's scalars NumPy → torch one by one, and reads a
  coefficient back with ``.item()`` (a host sync) to decide whether to add noise.
* :class:`NaiveTrainStep` reads the data through a per-item ``torch.utils.data.DataLoader``
  (one float image per ``__getitem__``, ToTensor-style conversion, default collation), draws t
  and ε on the host, gathers the q-sample coefficients on the host, updates the EMA parameter by
  parameter and logs the loss with ``.item()`` every step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import diffusion_core as core
from nets.sampling import NoiseFn, make_coefficients


@torch.no_grad()
def naive_sample(model: nn.Module, schedule: core.DiffusionSchedule, sampler: str, steps: int | None,
                 x_T: torch.Tensor, noise_fn: NoiseFn, objective: core.Objective = "eps",
                 eta: float = 0.0, clip_x0: bool = True, run_steps: int | None = None) -> torch.Tensor:
    """The reverse chain, tutorial style; ``run_steps`` stops after that many steps (the last
    of them adds no noise, like the final step). Same math as ``nets.sampling.sample``."""
    x = x_T
    num_steps = len(make_coefficients(schedule, sampler, steps, eta=eta).timesteps)
    run = num_steps if run_steps is None else min(run_steps, num_steps)
    for k in range(run):
        # Every table, recomputed on the host at every step.
        coeffs = make_coefficients(schedule, sampler, steps, eta=eta)
        tables = core.objective_tables(schedule, objective)
        t_k = int(coeffs.timesteps[k])
        t = torch.full((x.shape[0],), t_k, dtype=torch.long, device=x.device)
        output = model(x, t)
        x0 = (_scalar(tables.x0_from_xt_coef, t_k, x) * x
              + _scalar(tables.x0_from_output_coef, t_k, x) * output)
        if clip_x0:
            x0 = torch.clamp(x0, -1.0, 1.0)
        eps = (x - _scalar(coeffs.sqrt_alphas_cumprod, k, x) * x0) / _scalar(
            coeffs.sqrt_one_minus_alphas_cumprod, k, x)
        mean = _scalar(coeffs.x0_coef, k, x) * x0 + _scalar(coeffs.eps_coef, k, x) * eps
        sigma = _scalar(coeffs.sigma, k, x)
        if k < run - 1 and sigma.item() > 0:  # .item(): a host sync every step
            x = mean + sigma * noise_fn(k, x)
        else:
            x = mean
    return x


def _scalar(table: np.ndarray, i: int, like: torch.Tensor) -> torch.Tensor:
    """NumPy → torch, one scalar at a time (a host→device copy on an accelerator)."""
    return torch.tensor(table[i], dtype=like.dtype, device=like.device)


class PerItemImages(Dataset):
    """One float image per item, converted like torchvision's ToTensor + Normalize((0.5,), (0.5,))."""

    def __init__(self, images: np.ndarray):
        self.images = images  # (N, 28, 28) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.array(self.images[i])[:, :, None])  # (H, W, 1) uint8
        x = img.permute(2, 0, 1).contiguous().float().div(255)  # ToTensor: (1, H, W) in [0, 1]
        return (x - 0.5) / 0.5  # Normalize: [-1, 1]


class NaiveTrainStep:
    """One optimizer step per call (ε objective, AdamW, gradient clipping, EMA), tutorial style."""

    def __init__(self, model: nn.Module, images: np.ndarray, batch_size: int,
                 schedule: core.DiffusionSchedule, device: torch.device, lr: float = 2e-4,
                 grad_clip: float = 1.0, ema_decay: float = 0.999, seed: int = 0):
        torch.manual_seed(seed)
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.loader = DataLoader(PerItemImages(images), batch_size=batch_size, shuffle=True,
                                 drop_last=True)
        self.batches = iter(self.loader)
        self.schedule, self.device = schedule, device
        self.grad_clip, self.ema_decay = grad_clip, ema_decay
        self.losses: list[float] = []

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input of one step: x0 (B, 1, 28, 28), t (B,), ε, collated and drawn on the host."""
        try:
            x0 = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x0 = next(self.batches)
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],))  # host draws
        noise = torch.randn_like(x0)
        return x0, t, noise

    def __call__(self) -> None:
        x0, t, noise = self.batch()
        b = x0.shape[0]
        sqrt_ab = torch.from_numpy(self.schedule.sqrt_alphas_cumprod[t.numpy()]).float()
        sqrt_1m = torch.from_numpy(self.schedule.sqrt_one_minus_alphas_cumprod[t.numpy()]).float()
        x0, noise, t = x0.to(self.device), noise.to(self.device), t.to(self.device)
        xt = sqrt_ab.view(b, 1, 1, 1).to(self.device) * x0 + sqrt_1m.view(b, 1, 1, 1).to(self.device) * noise
        loss = F.mse_loss(self.model(xt, t), noise)  # Ho et al. (2020) eq. 14
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                p_ema.mul_(self.ema_decay).add_(p, alpha=1 - self.ema_decay)
        self.losses.append(loss.item())  # a host sync every step
