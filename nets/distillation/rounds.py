"""Progressive distillation, the rounds of ``nets.distill(DistillConfig(...))`` (its default method).

Round after round a student, initialised from its teacher, learns to make in one DDIM step what
the teacher makes in two (Salimans & Ho 2022), so the steps halve: ``from_steps`` (64) → 32 → ...
→ ``to_steps``. Each round is one call of the trainer's :func:`nets.training.fit.fit` with the
round's :class:`DistillationLoss` as its objective and the teacher's EMA weights as its start, so
a round has everything a training run has (AdamW, EMA, autocast, checkpoints, signals, time
budget, torchrun). The folder holds ``config.json``, one complete run folder per round
(``steps-32/``, ``steps-16/``, ...: checkpoint, metrics, loss.png, samples.png) and at the end
``checkpoint.pt``, the last student. Errors are the trainer's: ValueError (ConfigError naming the
field, CheckpointError for a bad teacher), RunInterrupted (its round saved), TrainingFailed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import diffusion_core as core
from nets import device as devices
from nets.checkpoint import CheckpointError, LoadedModel, load_checkpoint, load_model, save_checkpoint
from nets.diffusion import Diffusion
from nets.distillation.config import CONFIG_FILE, DEFAULT_FROM_STEPS, DEFAULT_STEPS_PER_ROUND, DistillConfig
from nets.distillation.loss import TARGET_WEIGHTING, DistillationLoss
from nets.fields import ConfigError
from nets.figures import plot_loss, save_grid
from nets.files import atomic_write, remove_stale_temp_files, write_json_atomic
from nets.progress import format_duration
from nets.sampling import Network
from nets.training.config import TrainConfig, saved_config
from nets.training.distributed import World
from nets.training.fit import Resume, RunFolderPath, RunInterrupted, WarmStart, fit, join_world, say
from nets.training.metrics_log import METRICS_FILE, read_metrics


@dataclass(frozen=True)
class DistilledRun(RunFolderPath):
    """What :func:`nets.distillation.distill` returns: the folder (``nets.load(run)`` samples its
    model by default: the last student at its steps, or a consistency model at its calls), those
    steps (calls), this call's seconds and the method."""

    run_dir: Path
    steps: int
    seconds: float
    method: str = "progressive"


@dataclass(frozen=True)
class Plan:
    """The teacher and the rounds: ``lists[r]`` the ascending DDIM steps of round r's teacher,
    ``lists[r + 1]`` its student's; ``from_steps`` resolved."""

    teacher: LoadedModel
    lists: list[np.ndarray]
    from_steps: int

    @property
    def rounds(self) -> int:
        return len(self.lists) - 1


def prepare(config: DistillConfig, resume: bool) -> tuple[DistillConfig, World, Path]:
    """The distillation's config (a copy), this process's world and the checked folder."""
    for name in ("teacher", "run_dir"):
        if not getattr(config, name) and not (resume and name == "teacher"):
            raise ConfigError(name, "required")
    cfg = replace(config)
    world = join_world(cfg.device, cfg.dist_timeout)
    if resume and cfg.world_size != world.size:
        raise ConfigError("world_size", f"this distillation ran on {cfg.world_size} process(es); "
                          f"resume it on as many")
    cfg.world_size = world.size
    return cfg, world, check_folder(cfg, resume)


def progressive(cfg: DistillConfig, world: World, run_dir: Path) -> DistilledRun:
    """Progressive distillation's rounds (each skipped when done, continued when interrupted)."""
    plan = plan_rounds(cfg, world.device)
    cfg.from_steps, start = plan.from_steps, time.perf_counter()
    make_folder(run_dir, world)
    if world.is_main:
        write_config(cfg)
    announce(cfg, plan, world)
    teacher, spent_before = plan.teacher, sum(cfg.rounds_seconds.values())
    for r in range(plan.rounds):
        teacher = run_round(cfg, plan, r, teacher, world, spent_before + time.perf_counter() - start)
    world.meet()
    if world.is_main:
        last = round_dir(cfg, len(plan.lists[-1])) / "checkpoint.pt"
        atomic_write(run_dir / "checkpoint.pt", lambda f: f.write(last.read_bytes()))
    return DistilledRun(run_dir, len(plan.lists[-1]), time.perf_counter() - start)


def check_folder(cfg: DistillConfig, resume: bool) -> Path:
    run_dir = Path(cfg.run_dir)
    if not resume and (run_dir / CONFIG_FILE).exists():
        raise ConfigError("run_dir", f"{run_dir} already holds a distillation; continue it with a "
                          f"resume or choose another folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run_dir", f"not a directory: {run_dir}")
    return run_dir


def make_folder(run_dir: Path, world: World) -> None:
    if not world.is_main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("run_dir", f"cannot write to {run_dir}: {err.strerror or err}") from None
    for tmp in remove_stale_temp_files([run_dir / "checkpoint.pt", run_dir / CONFIG_FILE]):
        say(f"removed {tmp.name}, left by a write that was killed")


def write_config(cfg: DistillConfig) -> None:
    """The distillation's config.json (rank 0 calls it): its settings and each finished round's time."""
    path = Path(cfg.run_dir) / CONFIG_FILE
    try:
        write_json_atomic(path, asdict(cfg))
    except OSError as err:
        raise ConfigError("run_dir", f"cannot write {path}: {err.strerror or err}") from None


def plan_rounds(cfg: DistillConfig, device: torch.device) -> Plan:
    """The teacher (CheckpointError unless it is a checkpoint of this package) and its rounds
    (ConfigError unless ``to_steps`` is ``from_steps`` over a power of two)."""
    teacher = load_model(cfg.teacher, "ema", device)
    T = teacher.diffusion.num_timesteps
    from_steps = cfg.from_steps or DEFAULT_FROM_STEPS
    if teacher.distilled is not None:  # a student distils on from the chain it was made for
        if cfg.from_steps not in (None, teacher.distilled.steps):
            raise ConfigError("from_steps", f"the teacher {teacher.path} is a student distilled for "
                              f"{teacher.distilled.steps} steps; it can only be distilled on from those")
        from_steps = teacher.distilled.steps
    if from_steps > T:
        raise ConfigError("from_steps", f"{from_steps} exceeds the teacher's T = {T}")
    try:
        lists = core.distillation_timesteps(T, from_steps, cfg.to_steps)
    except ValueError as err:
        raise ConfigError("to_steps", str(err)) from None
    if teacher.distilled is not None and tuple(lists[0]) != teacher.distilled.timesteps:
        raise ConfigError("teacher", f"its distilled steps {list(teacher.distilled.timesteps)} are not "
                          f"the trailing spacing of {from_steps} steps this halves")
    return Plan(teacher, lists, from_steps)


def announce(cfg: DistillConfig, plan: Plan, world: World) -> None:
    if world.is_main:
        chain = " → ".join(str(len(s)) for s in plan.lists)
        budget = f", {cfg.max_minutes:g} minutes in all" if cfg.max_minutes else ""
        say(f"distilling {plan.teacher.path} (step {plan.teacher.step}, objective "
            f"{plan.teacher.config.get('objective', 'eps')}): DDIM steps {chain}, {plan.rounds} "
            f"round{'s' if plan.rounds > 1 else ''}{budget}; the student predicts {cfg.objective}")


def round_dir(cfg: DistillConfig, steps: int) -> Path:
    return Path(cfg.run_dir) / f"steps-{steps:02d}"


def round_budget(cfg: DistillConfig, spent: float, rounds_left: int) -> float | None:
    """Minutes for the next round: what is left of ``max_minutes``, split evenly over the rounds
    left (at least 1 % of the budget, so a late round still plans an end)."""
    if not cfg.max_minutes:
        return None
    left = max(cfg.max_minutes - spent / 60, 0.01 * cfg.max_minutes)
    return left / rounds_left


def round_config(cfg: DistillConfig, teacher_cfg: dict, budget_minutes: float | None,
                 folder: Path) -> TrainConfig:
    """The TrainConfig of one round: the teacher's model, schedule and data, the student's
    objective and this distillation's optimizer, length and machine."""
    base = saved_config(teacher_cfg)
    return TrainConfig(**{
        **asdict(base), "objective": cfg.objective, "loss_weighting": TARGET_WEIGHTING,
        "data_dir": cfg.data_dir if cfg.data_dir is not None else base.data_dir, "epochs": None,
        "max_steps": cfg.steps_per_round or (None if budget_minutes else DEFAULT_STEPS_PER_ROUND),
        "max_minutes": budget_minutes, "batch_size": cfg.batch_size or base.batch_size, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "lr_schedule": "cosine", "weight_decay": 0.0,
        "grad_clip": cfg.grad_clip, "ema_decay": cfg.ema_decay, "seed": cfg.seed, "device": cfg.device,
        "compile": False, "precision": cfg.precision, "checkpoint_every": cfg.checkpoint_every,
        "keep_checkpoints": False, "log_every": cfg.log_every, "figures": False, "preview": False,
        "dist_timeout": cfg.dist_timeout, "world_size": cfg.world_size, "run_dir": str(folder)})


def round_record(plan: Plan, r: int, objective: str) -> dict:
    """What a round's checkpoints record of the student (``complete`` once the round ends)."""
    return {"timesteps": [int(t) for t in plan.lists[r + 1]], "teacher": str(plan.teacher.path),
            "teacher_timesteps": [int(t) for t in plan.lists[r]], "from_steps": plan.from_steps,
            "round": r + 1, "rounds": plan.rounds, "objective": objective,
            "weighting": TARGET_WEIGHTING, "complete": False}


def round_state(folder: Path, key: str = "distilled") -> dict | None:
    """The record (``key``: "distilled", or "consistency" for a tuning) of a round folder's
    checkpoint (None: no checkpoint yet); CheckpointError where it holds no such record."""
    if not (folder / "checkpoint.pt").exists():
        return None
    record = load_checkpoint(folder).get(key)
    if not isinstance(record, dict) or "complete" not in record:
        raise CheckpointError(f"{folder / 'checkpoint.pt'} is not a nets.distill round ({key})")
    return record


def round_objective(cfg: DistillConfig, plan: Plan, r: int, teacher: LoadedModel,
                    world: World) -> DistillationLoss:
    """Round r's loss: the teacher's two DDIM steps under the round's arithmetic, the student's
    objective on the teacher's schedule."""
    amp = devices.autocast_dtype(cfg.precision, world.device)
    student = Diffusion(teacher.diffusion.schedule, cfg.objective).to(world.device)
    tables = core.distillation_tables(teacher.diffusion.schedule, plan.lists[r])
    return DistillationLoss(Network(teacher.model, teacher.diffusion, amp), student, tables).to(world.device)


def run_round(cfg: DistillConfig, plan: Plan, r: int, teacher: LoadedModel, world: World,
              spent: float) -> LoadedModel:
    """Round r (skipped when its folder holds a complete student, continued when it holds an
    interrupted one), ``spent`` seconds of the budget gone: one fit of the student, then its
    record completed; the student, to teach the next round."""
    steps = len(plan.lists[r + 1])
    folder, record = round_dir(cfg, steps), round_state(round_dir(cfg, steps))
    if record is not None and record["complete"]:
        if world.is_main:
            say(f"round {r + 1}/{plan.rounds}: {folder} is done")
        return load_model(folder, "ema", world.device)
    budget = round_budget(cfg, spent, plan.rounds - r)
    length = f"{budget:.1f} minutes" if budget else f"{cfg.steps_per_round or DEFAULT_STEPS_PER_ROUND} steps"
    if world.is_main:
        say(f"round {r + 1}/{plan.rounds}: {2 * steps} → {steps} steps, {length}, into {folder}")
    try:
        done = fit(round_config(cfg, plan.teacher.config, budget, folder),
                   None if record is None else Resume(),
                   round_objective(cfg, plan, r, teacher, world),
                   WarmStart(teacher.model.state_dict(), {"distilled": round_record(plan, r, cfg.objective)}))
    except RunInterrupted as err:
        raise RunInterrupted(f"interrupted in round {r + 1} at step {err.step}: checkpoint saved; continue "
                             f"with --resume {cfg.run_dir}", err.signal, err.step) from err.__cause__
    if world.is_main:
        finish_round(cfg, folder, steps, done.seconds)
    return load_model(folder, "ema", world.device)


def finish_round(cfg: DistillConfig, folder: Path, steps: int, seconds: float) -> None:
    """Rank 0: the round's record marked complete, its time in config.json, its figures."""
    state = load_checkpoint(folder)
    state["distilled"] = {**state["distilled"], "complete": True}
    save_checkpoint(state, folder / "checkpoint.pt")
    cfg.rounds_seconds[str(steps)] = round(seconds, 1)
    write_config(cfg)
    say(f"round {state['distilled']['round']}/{state['distilled']['rounds']}: {steps}-step student after "
        f"{state['step']} steps in {seconds:.1f}s")
    if cfg.figures:
        round_figures(cfg, folder, steps)


def round_figures(cfg: DistillConfig, folder: Path, steps: int) -> None:
    """loss.png and samples.png (64 digits, 0-9 in turn, at the student's own steps)."""
    from nets.pipeline import load
    from nets.sampling.settings import SampleOptions, SamplerSettings

    plot_run_loss(folder, f"Distillation: {2 * steps} → {steps} steps")
    pipe = load(folder, cfg.device, cfg.precision)
    digit = "all" if pipe.conditional else None
    images = pipe.sample(64, digit=digit, sampler=SamplerSettings("ddim", steps=steps), seed=cfg.seed,
                         options=SampleOptions(64)).images
    save_grid(images, folder / "samples.png", ncol=8)


def plot_run_loss(folder: Path, title: str) -> None:
    """A round's (or the tuning's) loss.png from its metrics.jsonl, if it logged any row."""
    rows = read_metrics(folder / METRICS_FILE)
    if rows:
        plot_loss(np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows]),
                  np.array([r["epoch"] for r in rows]), folder / "loss.png", title=title)


def describe_end(result: DistilledRun) -> str:
    """The distillation's last line but one: where the students (or the consistency model) are."""
    plural = "s" if result.steps > 1 else ""
    if result.method == "consistency":
        return (f"consistency model tuned in {format_duration(result.seconds)} (this session): "
                f"{result.run_dir / 'checkpoint.pt'}, {result.steps} call{plural} by default "
                f"(nets.sample --steps K for K calls)")
    return (f"distilled to {result.steps} step{plural} in "
            f"{format_duration(result.seconds)} (this session): {result.run_dir / 'checkpoint.pt'} "
            f"(each round's student in {result.run_dir}/steps-NN/)")
