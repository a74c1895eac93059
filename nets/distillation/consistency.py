"""Consistency tuning (ECT, Geng et al. 2024): a trained diffusion model tuned into a consistency
model that samples in one or two network calls, as one call of the trainer's ``fit``.

The math is the core's (``diffusion_core.consistency``); this module gathers its tables on the
device. Per image, at the tuning's stage a (it grows with the run: Δt halves each stage):

    t  ~ ECT's log-normal noise level, on the schedule's indices (the core's timestep table,
         indexed by the trainer's uniform draw)
    r  = the core's ECT pair of t at stage a (r < t; at stage 0, low noise: r = t_min)
    x_t = α_t x0 + σ_t ε,  x_r = α_r x0 + σ_r ε           (the same x0 and ε: consistency training)
         or x_r = A(t, r)·x̂0_teacher(x_t, t) + B(t, r)·x_t    (one teacher DDIM step: distillation)
    f(x, t) = c_skip(t)·x + c_out(t)·x̂0_θ(x, t)            (the boundary f(x, t_min) = x exact)
    loss = mean over the batch of w(t, r)·(√(‖f_θ(x_t, t) − f_θ⁻(x_r, r)‖² + c²) − c)

with θ⁻ the same weights without gradient. The network runs in fp32 unless bf16 is asked for:
late in the tuning ‖f_t − f_r‖ is as small as bf16's rounding of f (measured on the 20-minute
MNIST teacher, pairs one index apart: median 0.060 against 0.070; docs/results.md).
``ConsistencyLoss`` has the ``loss(model, x0, t, noise, y)`` of :class:`nets.diffusion.Diffusion`
and ``at_step(step, end)``, which the training loop calls before each step, so the trainer's
step and loop (AdamW, autocast, EMA, checkpoints, signals, time budget, torchrun) run the tuning
unchanged. :func:`tune` is the tuning: the teacher's EMA weights as the start, the run folder
``consistency/`` inside the distillation's folder, its checkpoint copied to the folder's
``checkpoint.pt`` at the end.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import diffusion_core as core
from nets.checkpoint import LoadedModel, load_checkpoint, load_model, save_checkpoint
from nets.diffusion import Diffusion, as_table, extract
from nets.distillation.config import DistillConfig
from nets.distillation.rounds import (
    DistilledRun,
    make_folder,
    plot_run_loss,
    round_config,
    round_state,
    write_config,
)
from nets.fields import ConfigError
from nets.figures import save_grid
from nets.files import atomic_write
from nets.pipeline import load
from nets.progress import format_duration
from nets.sampling.settings import CONSISTENCY_CALLS, Network, SampleOptions, SamplerSettings
from nets.training.config import TrainConfig
from nets.training.distributed import World
from nets.training.fit import Resume, RunInterrupted, WarmStart, fit, say

FOLDER = "consistency"  # the tuning's run folder inside the distillation's
RECORDED_CALLS = (1, 2, 4)  # the call counts whose times the checkpoint records


class ConsistencyLoss(nn.Module):
    """The consistency-training loss of a model with ``student``'s objective (v or x0), its ECT
    pairs shrinking over ``stages`` equal parts of the run. The run's previews show one call."""

    preview_sampler = SamplerSettings("consistency", steps=1)

    def __init__(self, student: Diffusion, stages: int, numbers_per_image: int, time_draw: str = "lognormal",
                 teacher: Network | None = None):
        super().__init__()
        self.teacher = teacher  # None: consistency training; a Network: consistency distillation
        schedule = student.schedule
        T = schedule.num_timesteps
        if T < 2:
            raise ValueError("consistency tuning needs T >= 2: at T = 1 there is no pair (t, r)")
        self.student, self.stages, self.stage = student, stages, 0
        self.huber_c = core.pseudo_huber_scale(numbers_per_image)
        c_skip, c_out = core.consistency_scalings(schedule, np.arange(T))
        self.register_buffer("c_skip", as_table(c_skip), persistent=False)
        self.register_buffer("c_out", as_table(c_out), persistent=False)
        if time_draw == "lognormal":
            draws = core.lognormal_timestep_table(schedule)
        else:  # the trainer's uniform index, moved off t_min (where f is the identity: no pair)
            draws = np.maximum(np.arange(T), core.T_MIN + 1)
        self.register_buffer("draw_table", as_table(draws), persistent=False)
        t = np.arange(1, T)
        pairs = np.zeros((stages, T), dtype=np.int64)  # row a: r of every t at stage a (t = 0 unused)
        weights, jump_a, jump_b = np.zeros((stages, T)), np.zeros((stages, T)), np.zeros((stages, T))
        for a in range(stages):
            pairs[a, 1:] = core.ect_pair_timesteps(schedule, t, a)
            weights[a, 1:] = core.consistency_weights(schedule, t, pairs[a, 1:])
            jump_a[a, 1:], jump_b[a, 1:] = core.ddim_jump_coefficients(schedule, t, pairs[a, 1:])
        for name, table in (("pairs", pairs), ("weights", weights), ("jump_a", jump_a), ("jump_b", jump_b)):
            self.register_buffer(name, as_table(table), persistent=False)

    def at_step(self, step: int, end: int) -> None:
        """The stage of optimizer step ``step`` in a run ending at ``end``: ⌊stages·step/end⌋."""
        self.stage = min(self.stages - 1, self.stages * step // max(end, 1))

    def consistency_function(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                             y: torch.Tensor | None) -> torch.Tensor:
        """f(x, t) = c_skip(t)·x + c_out(t)·x̂0 of ``model`` (float32)."""
        out = model(x, t) if y is None else model(x, t, y)
        x0 = self.student.predict_x0(x, t, out.float())
        return extract(self.c_skip, t, x) * x + extract(self.c_out, t, x) * x0

    @torch.no_grad()
    def target_point(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                     noise: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x_r: training's α_r x0 + σ_r ε (the ε of x_t), or distillation's DDIM jump from x_t to r
        with the teacher's x̂0 (clipped to [-1, 1], as its sampler clips it)."""
        if self.teacher is None:
            return self.student.q_sample(x0, r, noise)
        out = self.teacher.model(x_t, t) if y is None else self.teacher.model(x_t, t, y)
        x0_teacher = self.teacher.diffusion.predict_x0(x_t, t, out.float()).clamp(-1.0, 1.0)
        a, b = extract(self.jump_a[self.stage], t, x_t), extract(self.jump_b[self.stage], t, x_t)
        return a * x0_teacher + b * x_t

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted pseudo-Huber distance between f at (x_t, t) and, without gradient, at
        (x_r, r) (a scalar)."""
        t = self.draw_table[t]
        r = self.pairs[self.stage][t]
        x_t = self.student.q_sample(x0, t, noise)
        f_t = self.consistency_function(model, x_t, t, y)
        with torch.no_grad():
            f_r = self.consistency_function(model, self.target_point(x0, x_t, t, r, noise, y), r, y)
        squared = ((f_t - f_r) ** 2).flatten(1).sum(1)
        c = self.huber_c
        distance = squared / (torch.sqrt(squared + c * c) + c)  # √(‖Δ‖² + c²) − c, exact at small Δ
        return torch.mean(self.weights[self.stage][t].to(distance.dtype) * distance)


def tune(cfg: DistillConfig, world: World, run_dir: Path) -> DistilledRun:
    """The tuning ``cfg`` describes (continued where its folder holds an interrupted one)."""
    teacher = load_teacher(cfg, world)
    start, folder = time.perf_counter(), run_dir / FOLDER
    make_folder(run_dir, world)
    if world.is_main:
        write_config(cfg)
    state = round_state(folder, "consistency")
    if state is not None and state["complete"]:
        if world.is_main:
            say(f"{folder} is done")
    else:
        announce(cfg, teacher, world)
        try:
            done = fit(tuning_config(cfg, teacher, folder), None if state is None else Resume(),
                       tuning_objective(cfg, teacher, world),
                       WarmStart(teacher.model.state_dict(), {"consistency": tuning_record(cfg, teacher)}))
        except RunInterrupted as err:
            raise RunInterrupted(f"interrupted at step {err.step}: checkpoint saved; continue with "
                                 f"--resume {cfg.run_dir}", err.signal, err.step) from err.__cause__
        if world.is_main:
            finish(cfg, folder, done.seconds)
    world.meet()
    if world.is_main:
        last = folder / "checkpoint.pt"
        atomic_write(run_dir / "checkpoint.pt", lambda f: f.write(last.read_bytes()))
    calls = tuning_record(cfg, teacher)["calls"]
    return DistilledRun(run_dir, calls, time.perf_counter() - start, "consistency")


def load_teacher(cfg: DistillConfig, world: World) -> LoadedModel:
    """The teacher's EMA weights; a consistency model is not a teacher (tune it on with resume)."""
    teacher = load_model(cfg.teacher, "ema", world.device)
    if teacher.consistency is not None:
        raise ConfigError("teacher", f"{teacher.path} is already a consistency model; tune a trained "
                          f"diffusion model (its teacher: {teacher.consistency.teacher})")
    if teacher.diffusion.num_timesteps < 2:
        raise ConfigError("teacher", f"{teacher.path} has T = 1: consistency tuning needs T >= 2")
    return teacher


def announce(cfg: DistillConfig, teacher: LoadedModel, world: World) -> None:
    if world.is_main:
        length = (f"{cfg.max_minutes:g} minutes" if cfg.max_minutes
                  else f"{cfg.steps_per_round or 1000} steps")
        say(f"consistency tuning of {teacher.path} (step {teacher.step}, objective "
            f"{teacher.config.get('objective', 'eps')}): {length}, {cfg.stages} stages of ECT's "
            f"shrinking Δt; the model predicts {cfg.objective}, into {Path(cfg.run_dir) / FOLDER}")


def tuning_config(cfg: DistillConfig, teacher: LoadedModel, folder: Path) -> TrainConfig:
    """The TrainConfig of the tuning: a distillation round's (the teacher's model, schedule and
    data; this distillation's optimizer, length and machine), fp32 unless bf16 is asked for, with
    previews (one consistency call) unless figures are off."""
    precision = "fp32" if cfg.precision == "auto" else cfg.precision
    return replace(round_config(cfg, teacher.config, cfg.max_minutes, folder), loss_weighting="uniform",
                   precision=precision, preview=cfg.figures)


def tuning_objective(cfg: DistillConfig, teacher: LoadedModel, world: World) -> ConsistencyLoss:
    student = Diffusion(teacher.diffusion.schedule, cfg.objective)
    numbers = int(np.prod(teacher.model.config.image_shape))
    teacher_net = Network(teacher.model, teacher.diffusion) if cfg.target == "teacher" else None
    return ConsistencyLoss(student, cfg.stages, numbers, cfg.time_draw, teacher_net).to(world.device)


def tuning_record(cfg: DistillConfig, teacher: LoadedModel) -> dict:
    """What the tuning's checkpoints record (``complete`` once it ends); nets.checkpoint reads it."""
    schedule, T = teacher.diffusion.schedule, teacher.diffusion.num_timesteps
    times = {str(k): [int(t) for t in core.consistency_timesteps(schedule, k)]
             for k in RECORDED_CALLS if k < T}
    return {"teacher": str(teacher.path), "calls": min(CONSISTENCY_CALLS, T - 1), "stages": cfg.stages,
            "time_draw": cfg.time_draw, "target": cfg.target, "times": times,
            "t_min": core.T_MIN, "objective": cfg.objective, "complete": False}


def finish(cfg: DistillConfig, folder: Path, seconds: float) -> None:
    """Rank 0: the record marked complete, the time in config.json, the figures."""
    state = load_checkpoint(folder)
    state["consistency"] = {**state["consistency"], "complete": True}
    save_checkpoint(state, folder / "checkpoint.pt")
    cfg.rounds_seconds[FOLDER] = round(seconds, 1)
    write_config(cfg)
    say(f"consistency model after {state['step']} steps in {format_duration(seconds)}")
    if cfg.figures:
        figures(cfg, folder)


def figures(cfg: DistillConfig, folder: Path) -> None:
    """loss.png and samples.png (32 images at 1 call over 32 at 2 calls, classes in turn)."""

    plot_run_loss(folder, "Consistency tuning")
    pipe = load(folder, cfg.device, cfg.precision)
    label = "all" if pipe.conditional else None
    images = [pipe.sample(32, label=label, sampler=pipe.consistency_sampler(calls), seed=cfg.seed,
                          options=SampleOptions(64)).images for calls in (1, 2)]
    save_grid(np.concatenate(images), folder / "samples.png", ncol=8)
