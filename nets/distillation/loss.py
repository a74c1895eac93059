"""One round of progressive distillation on the device: the teacher's two DDIM steps, the target,
the student's weighted loss (Salimans & Ho 2022, Algorithm 2).

The math is the core's (``diffusion_core.distillation``): its tables say, for each of the round's
K student steps t → t'', the teacher's midpoint t' and every jump's (A, B). This module only
gathers them: per image,

    z_t  = α_t x0 + σ_t ε                              (the core's q-sample tables)
    z_t' = A(t, t')·x̂0_teacher(z_t, t) + B(t, t')·z_t    two teacher DDIM (η = 0) steps,
    z_t''= A(t', t'')·x̂0_teacher(z_t', t') + B(t', t'')·z_t'   x̂0 clipped as the samplers clip it
    x̃   = (z_t'' − B(t, t'')·z_t) / A(t, t'')            the target
    loss = mean over the batch of max(SNR_t, 1)·‖x̂0_student(z_t, t) − x̃‖² / pixels

``DistillationLoss`` has the ``loss(model, x0, t, noise, y)`` of :class:`nets.diffusion.Diffusion`,
so the trainer's step (AdamW, autocast, EMA, clipping) and loop (checkpoints, signals, time
budget, torchrun) run a round unchanged. Its ``t`` is drawn, as the trainer draws it, uniformly
over the T indices; the image trains the student step whose span (its step, down to the next
student step) holds t: a uniform draw over the student's steps, in proportion to their spans.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import diffusion_core as core
from nets.diffusion import Diffusion, as_table, extract
from nets.sampling.settings import Network

# The x0-loss weight of Salimans & Ho (2022) §4: SNR where the image is mostly there, 1 where it
# is mostly noise, so the noisiest student step (the one few-step sampling leans on) still counts
TARGET_WEIGHTING = "truncated-snr"


class DistillationLoss(nn.Module):
    """The loss of one round: the frozen ``teacher`` (a Network on any objective) runs the two
    DDIM steps of ``tables``; the student is trained in ``student`` (its objective, x0 or v)."""

    def __init__(self, teacher: Network, student: Diffusion, tables: core.DistillationTables):
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.num_timesteps = student.num_timesteps
        ascending = np.asarray(tables.timesteps)[::-1].copy()
        self.register_buffer("ascending_timesteps", as_table(ascending),
                             persistent=False)
        weights = core.loss_weights(student.schedule, "x0", TARGET_WEIGHTING)
        self.register_buffer("x0_weight", as_table(weights), persistent=False)
        # the round's tables in running order (row k: student step k), float64 where supported
        for name in ("timesteps", "mid_timesteps", "next_timesteps"):
            self.register_buffer(name, as_table(np.asarray(getattr(tables, name), dtype=np.int64)),
                                 persistent=False)
        for name in ("teacher_first_a", "teacher_first_b", "teacher_second_a", "teacher_second_b",
                     "student_a", "student_b"):
            self.register_buffer(name, as_table(getattr(tables, name)), persistent=False)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def student_step(self, t: torch.Tensor) -> torch.Tensor:
        """The running-order step k (0 = noisiest) whose span holds each index t in [0, T): the
        first student timestep at or above t."""
        position = torch.searchsorted(self.ascending_timesteps, t.contiguous())  # ascending position
        return self.num_steps - 1 - position

    @torch.no_grad()
    def teacher_x0(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The teacher's x̂0 at (z, t), clipped to [-1, 1] as its DDIM sampler clips it."""
        model = self.teacher.model
        out = model(z, t) if y is None else model(z, t, y)
        return self.teacher.diffusion.predict_x0(z, t, out.float()).clamp(-1.0, 1.0)

    def target(self, zt: torch.Tensor, k: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x̃ of student steps ``k`` from ``zt`` (float32): where the teacher's two DDIM steps land,
        pulled back through the student's one jump."""
        t, mid = self.timesteps[k], self.mid_timesteps[k]
        with torch.no_grad():
            z_mid = (extract(self.teacher_first_a, k, zt) * self.teacher_x0(zt, t, y)
                     + extract(self.teacher_first_b, k, zt) * zt)
            z_next = (extract(self.teacher_second_a, k, zt) * self.teacher_x0(z_mid, mid, y)
                      + extract(self.teacher_second_b, k, zt) * z_mid)
            return (z_next - extract(self.student_b, k, zt) * zt) / extract(self.student_a, k, zt)

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted x0-MSE of the student ``model`` against x̃ (a scalar)."""
        k = self.student_step(t)
        ts = self.timesteps[k]
        zt = self.student.q_sample(x0, ts, noise)
        target = self.target(zt, k, y)
        pred = model(zt, ts) if y is None else model(zt, ts, y)
        x0_hat = self.student.predict_x0(zt, ts, pred.float())
        per_image = ((x0_hat - target) ** 2).flatten(1).mean(1)
        return torch.mean(self.x0_weight[ts].to(per_image.dtype) * per_image)
