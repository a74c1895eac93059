"""One optimizer step: the batch it trains on, the loss under autocast, AdamW, the EMA update.

Nothing here syncs with the host: the batch is drawn on the device from the run's generator and
the loss comes back as a device tensor, read by the loop only at log steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from nets.training.config import TrainConfig


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


class Batch(NamedTuple):
    """One step's input: clean images, timesteps, noise and (conditional runs) labels."""

    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor | None


def draw_batch(data: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor, rows: slice,
               gen: torch.Generator, cfg: TrainConfig) -> Batch:
    """The input of one step, all drawn on the device (no host work, no sync).

    ``idx`` holds the global batch's image indices. Every rank draws t, ε and the label dropout
    for the whole global batch and keeps its ``rows``: the ranks together train on exactly the
    batch that one process would.
    """
    global_batch, device = len(idx), data.device
    idx = idx[rows]
    x0 = data[idx]  # (B, C, H, W), B = cfg.batch_size
    t = torch.randint(0, cfg.timesteps, (global_batch,), generator=gen, device=device)[rows]
    noise = torch.randn((global_batch, *x0.shape[1:]), generator=gen, device=device)[rows]
    y = None
    if cfg.conditional:  # classifier-free guidance: drop labels to "no label" (index num_classes)
        drop = torch.rand(global_batch, generator=gen, device=device)[rows] < cfg.label_dropout
        y = torch.where(drop, torch.full_like(targets[idx], cfg.unet["num_classes"]), targets[idx])
    return Batch(x0, t, noise, y)


class Objective(Protocol):
    """What a run minimises: :meth:`nets.diffusion.Diffusion.loss` (the diffusion loss) or any
    loss with its signature, e.g. a distillation round's (``nets.distillation.loss``). An
    objective that changes over the run also has ``at_step(step, end)``, which the loop calls
    before each step (the consistency tuning's stage, ``nets.distillation.consistency``)."""

    def loss(self, model: Callable, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Learner:
    """What one optimizer step uses and changes: the weights (called through ``forward``: the
    model, or it wrapped by DDP / torch.compile), their EMA, AdamW, the objective, and the
    autocast dtype of the network (None: fp32)."""

    forward: Callable
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective
    amp_dtype: torch.dtype | None = None


def train_step(learner: Learner, batch: Batch, lr: float, ema_decay: float, grad_clip: float) -> torch.Tensor:
    """One optimizer step at learning rate ``lr``: loss (network under autocast), AdamW with the
    gradient's global norm clipped to ``grad_clip``, then EMA ← decay·EMA + (1 − decay)·weights.
    The loop takes ``lr`` and ``ema_decay`` from the run's schedules (``nets.training.config``).

    Returns the loss as a device tensor: reading it is the caller's choice, so the step itself
    never syncs.
    """
    model, optimizer, amp_dtype = learner.model, learner.optimizer, learner.amp_dtype
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(batch.x0.device.type, dtype=amp_dtype or torch.bfloat16,
                        enabled=amp_dtype is not None):
        loss = learner.objective.loss(learner.forward, batch.x0, batch.t, batch.noise, batch.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(learner.ema.parameters()), list(model.parameters()),
                             1.0 - ema_decay)
    return loss.detach()
