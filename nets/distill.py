"""Distil a trained model down to a few network calls: ``python -m nets.distill``.

Progressive distillation (Salimans & Ho 2022): round after round a student, initialised from its
teacher, learns to make in one DDIM step what the teacher makes in two, so the steps halve each
round: --from-steps (64) → 32 → ... → --to-steps. The target of each step is the core's closed
form (``diffusion_core.distillation``); the loss is ``nets.training.distillation``; each round is
one run of the trainer's own loop (AdamW, EMA, autocast, checkpoints, signals, time budget,
torchrun), so it has everything a training run has.

    python -m nets.distill --teacher runs/<name> --to-steps 4 --max-minutes 20 --run-dir runs/<name>-4
    python -m nets.sample --checkpoint runs/<name>-4            # its 4 DDIM steps, by default

The run folder holds ``config.json``, one folder per round ``steps-32/``, ``steps-16/``, ...
(each a complete checkpoint of that round's student, its ``metrics.jsonl``, ``loss.png`` and a
grid of its digits ``samples.png``: sample any of them with ``nets.sample --checkpoint``), and at
the end ``checkpoint.pt``, the last student. A student predicts v (or x0, --objective): ε is
unstable where the SNR is low, and few-step students start from there. Conditional teachers are
distilled with their labels, a tenth of them dropped to "no label" as in training, so the student
keeps classifier-free guidance.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

import diffusion_core as core
from nets import cli
from nets.checkpoint import (
    CheckpointError,
    Distilled,
    LoadedModel,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from nets.data import MnistArrays, training_and_held_out
from nets.device import memory_format_for, use_tf32_on_cuda
from nets.diffusion import Diffusion
from nets.figures import plot_loss, save_grid
from nets.files import atomic_write, remove_stale_temp_files, write_json_atomic
from nets.pipeline import Pipeline
from nets.progress import format_duration
from nets.sampling import Network
from nets.sampling.settings import SampleOptions, SamplerSettings
from nets.training import distributed
from nets.training.config import TrainConfig, saved_config, total_steps
from nets.training.distillation import TARGET_WEIGHTING, DistillationLoss
from nets.training.distributed import World
from nets.training.loop import SIGNAL_EXIT_CODES, TrainingFailed, train_loop
from nets.training.metrics_log import METRICS_FILE, read_metrics, write_metrics
from nets.training.run import TrainingData, TrainingRun, build_run, restore, training_data, wrap_for_training

CONFIG_FILE = "config.json"
STUDENT_OBJECTIVES = ("v", "x0")  # both stable at low SNR; ε is not (Salimans & Ho 2022 §4)
ROUND_FILES = ("checkpoint.pt", METRICS_FILE, "loss.png", "samples.png")


@dataclass
class DistillConfig:
    """Everything that defines a distillation; saved as the run folder's config.json."""

    teacher: str = ""
    run_dir: str = ""
    to_steps: int = 4
    from_steps: int | None = None  # None: 64, or a distilled teacher's own steps
    steps_per_round: int | None = None  # None: DEFAULT_STEPS_PER_ROUND unless --max-minutes
    max_minutes: float | None = None  # all rounds together, split across them
    objective: str = "v"
    lr: float = 1e-3  # half the trainer's peak: each round fine-tunes a trained network
    warmup_steps: int = 50
    batch_size: int | None = None  # None: the teacher's
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    data_dir: str | None = None  # None: the teacher's
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 25
    figures: bool = True
    dist_timeout: float = 300.0
    world_size: int = 1  # processes that ran it (torchrun), not a flag
    rounds_seconds: dict = field(default_factory=dict)  # not a flag: each finished round's time


DEFAULT_FROM_STEPS = 64
DEFAULT_STEPS_PER_ROUND = 1000
RESUMABLE = ("device", "precision", "log_every", "checkpoint_every", "figures", "dist_timeout")


# ---- flags ------------------------------------------------------------------------------------

def build_parser() -> cli.Parser:
    d = DistillConfig()
    p = cli.Parser(prog="python -m nets.distill", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=cli.existing_path,
                   help="the run directory (or checkpoint.pt) of the model to distil; a distilled "
                   "student distils on from its own steps")
    p.add_argument("--to-steps", type=cli.positive_int,
                   help=f"the steps of the last student: --from-steps divided by a power of two "
                   f"(default {d.to_steps})")
    p.add_argument("--from-steps", type=cli.int_at_least(2),
                   help=f"the DDIM steps of the first teacher (default {DEFAULT_FROM_STEPS}; a "
                   f"distilled teacher: its own)")
    p.add_argument("--steps-per-round", type=cli.positive_int,
                   help=f"optimizer steps of each round (default {DEFAULT_STEPS_PER_ROUND}, or as "
                   f"many as --max-minutes allows)")
    p.add_argument("--max-minutes", type=cli.positive_float,
                   help="a wall-clock budget for all rounds together, split evenly over the rounds "
                   "left at each round's start, each with the trainer's planned end (the lr "
                   "decays to 0 as each round's time ends); --steps-per-round still bounds a round")
    p.add_argument("--run-dir", type=Path, help="the folder of the distillation (required)")
    p.add_argument("--resume", type=cli.directory, metavar="RUN_DIR",
                   help="continue an interrupted distillation in its own folder, with its own "
                   "settings (only --device, --precision, --log-every, --checkpoint-every, "
                   "--no-figures may change)")
    p.add_argument("--objective", choices=STUDENT_OBJECTIVES,
                   help=f"what the student predicts (default {d.objective}; ε is unstable at low SNR)")
    p.add_argument("--lr", type=cli.positive_float,
                   help=f"peak learning rate of each round (default {d.lr:g})")
    p.add_argument("--warmup-steps", type=cli.int_at_least(0),
                   help=f"linear lr warm-up of each round, then a cosine to 0 (default {d.warmup_steps})")
    p.add_argument("--batch-size", type=cli.positive_int, help="images per step per process "
                   "(default: the teacher's)")
    p.add_argument("--seed", type=cli.int_at_least(0, 2**32 - 1), help=f"seed (default {d.seed})")
    p.add_argument("--data-dir", help="MNIST folder (default: the teacher's)")
    cli.add_device(p)
    cli.add_precision(p, "The teacher and the student run under it")
    p.add_argument("--log-every", type=cli.positive_int, default=d.log_every, help="steps per log row")
    p.add_argument("--checkpoint-every", type=cli.positive_int, default=d.checkpoint_every,
                   help="steps between a round's checkpoints (and its last step, and a signal)")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="no loss.png / samples.png per round")
    p.add_argument("--dist-timeout", type=cli.positive_float, default=d.dist_timeout,
                   help="under torchrun: seconds a process waits for the others before the job fails")
    return p


SETTINGS_FLAGS = ("teacher", "to_steps", "from_steps", "steps_per_round", "max_minutes", "objective",
                  "lr", "warmup_steps", "batch_size", "seed", "data_dir")


def config_from_args(argv: list[str] | None) -> tuple[DistillConfig, bool]:
    """(the config, whether it resumes); exit 2 on flags that do not fit together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in SETTINGS_FLAGS if getattr(args, name) is not None]
        if given:
            parser.error(f"argument --resume: continues with the run's own settings; drop {', '.join(given)}")
        cfg = read_config(args.resume)
        for name in RESUMABLE:
            setattr(cfg, name, getattr(args, name))
        cfg.run_dir = str(args.resume)
        return cfg, True
    if args.teacher is None or args.run_dir is None:
        parser.error("the following arguments are required: --teacher, --run-dir (or --resume RUN_DIR)")
    values = {f.name: getattr(args, f.name) for f in fields(DistillConfig)
              if hasattr(args, f.name) and getattr(args, f.name) is not None}
    cfg = DistillConfig(**{**values, "teacher": str(args.teacher), "run_dir": str(args.run_dir)})
    return cfg, False


def read_config(run_dir: Path) -> DistillConfig:
    path = run_dir / CONFIG_FILE
    try:
        return DistillConfig(**json.loads(path.read_text()))
    except FileNotFoundError:
        cli.fail(f"--resume: {run_dir} holds no {CONFIG_FILE}: not a nets.distill folder")
    except (json.JSONDecodeError, TypeError) as err:
        cli.fail(f"--resume: {path} is not a nets.distill config: {err}")


# ---- the plan of rounds -----------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The teacher and the rounds: ``lists[r]`` the ascending DDIM steps of round r's teacher,
    ``lists[r + 1]`` its student's."""

    teacher: LoadedModel
    lists: list[np.ndarray]

    @property
    def rounds(self) -> int:
        return len(self.lists) - 1


def plan_rounds(cfg: DistillConfig, device: torch.device) -> Plan:
    """The teacher (exit 2 unless it is a checkpoint of this package) and its rounds (exit 2
    unless --to-steps is --from-steps over a power of two)."""
    try:
        teacher = load_model(cfg.teacher, "ema", device)
    except CheckpointError as err:
        cli.fail(f"--teacher: {err}")
    T = teacher.diffusion.num_timesteps
    if teacher.distilled is not None:  # a student distils on from the chain it was made for
        if cfg.from_steps not in (None, teacher.distilled.steps):
            cli.fail(f"--from-steps: the teacher {teacher.path} is a student distilled for "
                     f"{teacher.distilled.steps} steps; it can only be distilled on from those")
        cfg.from_steps = teacher.distilled.steps
    cfg.from_steps = cfg.from_steps or DEFAULT_FROM_STEPS
    if cfg.from_steps > T:
        cli.fail(f"--from-steps: {cfg.from_steps} exceeds the teacher's T = {T}")
    try:
        lists = core.distillation_timesteps(T, cfg.from_steps, cfg.to_steps)
    except ValueError as err:
        cli.fail(f"--to-steps: {err}")
    if teacher.distilled is not None and tuple(lists[0]) != teacher.distilled.timesteps:
        cli.fail(f"--teacher: its distilled steps {list(teacher.distilled.timesteps)} are not the "
                 f"trailing spacing of {cfg.from_steps} steps this command halves")
    return Plan(teacher, lists)


def round_dir(cfg: DistillConfig, steps: int) -> Path:
    return Path(cfg.run_dir) / f"steps-{steps:02d}"


def round_config(cfg: DistillConfig, teacher_cfg: dict, budget_minutes: float | None,
                 world: World) -> TrainConfig:
    """The TrainConfig of one round: the teacher's model, schedule and data, the student's
    objective and this command's optimizer, length and machine."""
    base = saved_config(teacher_cfg)
    return TrainConfig(**{
        **asdict(base), "objective": cfg.objective, "loss_weighting": TARGET_WEIGHTING,
        "data_dir": cfg.data_dir if cfg.data_dir is not None else base.data_dir,
        "epochs": None,
        "max_steps": cfg.steps_per_round or (None if budget_minutes else DEFAULT_STEPS_PER_ROUND),
        "max_minutes": budget_minutes, "batch_size": cfg.batch_size or base.batch_size, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "lr_schedule": "cosine", "weight_decay": 0.0,
        "grad_clip": cfg.grad_clip, "ema_decay": cfg.ema_decay, "seed": cfg.seed, "device": cfg.device,
        "compile": False, "precision": cfg.precision, "checkpoint_every": cfg.checkpoint_every,
        "keep_checkpoints": False, "log_every": cfg.log_every, "figures": False, "preview": False,
        "dist_timeout": cfg.dist_timeout, "world_size": world.size})


# ---- one round ----------------------------------------------------------------------------------

@dataclass
class DistillationRun(TrainingRun):
    """A round's training run; its checkpoint also records what the student was distilled for."""

    distilled: dict = field(default_factory=dict)

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "distilled": self.distilled}


def build_round(cfg: DistillConfig, plan: Plan, r: int, teacher: LoadedModel, train_cfg: TrainConfig,
                world: World) -> DistillationRun:
    """Round r at step 0: the student (and its EMA) = the teacher's EMA weights, AdamW fresh."""
    amp = cli.autocast_from_flag(train_cfg.precision, world.device)
    base = build_run(train_cfg, world, round_dir(cfg, len(plan.lists[r + 1])), amp)
    base.model.load_state_dict(teacher.model.state_dict())
    base.ema.load_state_dict(teacher.model.state_dict())
    student = Diffusion(teacher.diffusion.schedule, cfg.objective).to(world.device)
    tables = core.distillation_tables(teacher.diffusion.schedule, plan.lists[r])
    loss = DistillationLoss(Network(teacher.model, teacher.diffusion, amp), student, tables).to(world.device)
    run = DistillationRun(**{f.name: getattr(base, f.name) for f in fields(TrainingRun)})
    run.diffusion = loss
    run.class_counts = teacher.class_counts
    run.distilled = {"timesteps": [int(t) for t in plan.lists[r + 1]], "teacher": str(teacher.path),
                     "teacher_timesteps": [int(t) for t in plan.lists[r]], "from_steps": cfg.from_steps,
                     "round": r + 1, "rounds": plan.rounds, "objective": cfg.objective,
                     "weighting": TARGET_WEIGHTING, "complete": False}
    return run


def round_state(path: Path) -> dict | None:
    """The distillation record of a round folder's checkpoint (None: no checkpoint yet)."""
    if not (path / "checkpoint.pt").exists():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        cli.fail(f"--resume: {err}")
    record = state.get("distilled")
    if not isinstance(record, dict) or "complete" not in record:
        cli.fail(f"--resume: {path / 'checkpoint.pt'} is not a nets.distill round")
    return record


def load_student(path: Path, device: torch.device) -> LoadedModel:
    try:
        return load_model(path, "ema", device)
    except CheckpointError as err:
        cli.fail(f"--resume: {err}")


def round_figures(run: DistillationRun, steps: int) -> None:
    """loss.png and samples.png (64 digits, 0-9 in turn, at the student's own steps)."""
    rows = read_metrics(run.run_dir / METRICS_FILE)
    if rows:
        plot_loss(np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows]),
                  np.array([r["epoch"] for r in rows]), run.run_dir / "loss.png",
                  title=f"Distillation round {run.distilled['round']}: {2 * steps} → {steps} steps")
    diffusion = Diffusion(run.diffusion.student.schedule, run.cfg.objective).to(run.world.device)
    loaded = LoadedModel(run.ema.eval(), diffusion, asdict(run.cfg), run.step, run.run_dir / "checkpoint.pt",
                         run.class_counts)
    pipe = Pipeline(loaded, run.amp_dtype)
    digit = "all" if pipe.conditional else None
    images = pipe.sample(64, digit=digit, sampler=SamplerSettings("ddim", steps=steps), seed=run.cfg.seed,
                         options=SampleOptions(64)).images
    save_grid(images, run.run_dir / "samples.png", ncol=8)


def student_of(run: DistillationRun, steps: list[int], from_steps: int) -> LoadedModel:
    """The round's EMA student as a model to sample or to teach the next round."""
    diffusion = Diffusion(run.diffusion.student.schedule, run.cfg.objective).to(run.world.device)
    return LoadedModel(run.ema.eval(), diffusion, asdict(run.cfg), run.step, run.run_dir / "checkpoint.pt",
                       run.class_counts, "ema", Distilled(tuple(steps), run.distilled["teacher"], from_steps))


# ---- the command --------------------------------------------------------------------------------

def load_data(cfg: TrainConfig, world: World, memory_format: torch.memory_format) -> TrainingData:
    """The teacher's training images (its --split, --limit; never its held-out digits)."""
    with world.local_main_first():
        arrays = cli.mnist_or_exit(cfg.data_dir, cfg.split)
    try:
        rows, _held = training_and_held_out(len(arrays), cfg.limit, cfg.holdout)
        data = training_data(MnistArrays(arrays.images[rows], arrays.labels[rows]), cfg, world, memory_format)
    except ValueError as err:
        cli.fail(str(err))
    if world.is_main:
        held = f", its {cfg.holdout} held-out digits left out" if cfg.holdout else ""
        print(f"data: {data.count} images of MNIST {cfg.split} (the teacher's{held}); "
              f"{data.global_batch} per step", file=sys.stderr)
    return data


def prepare_folder(cfg: DistillConfig, resuming: bool, world: World) -> Path:
    run_dir = Path(cfg.run_dir)
    if not resuming and (run_dir / CONFIG_FILE).exists():
        cli.fail(f"--run-dir: {run_dir} already holds a distillation; continue it with "
                 f"--resume {run_dir} or choose another --run-dir")
    if world.is_main:
        cli.ensure_writable_dir(run_dir, "--run-dir")
        for tmp in remove_stale_temp_files([run_dir / "checkpoint.pt", run_dir / CONFIG_FILE]):
            print(f"removed {tmp.name}, left by a write that was killed", file=sys.stderr)
    return run_dir


def write_config(cfg: DistillConfig, world: World) -> None:
    if not world.is_main:
        return
    try:
        write_json_atomic(Path(cfg.run_dir) / CONFIG_FILE, asdict(cfg))
    except OSError as err:
        cli.fail(f"--run-dir: cannot write {Path(cfg.run_dir) / CONFIG_FILE}: {err.strerror or err}")


def round_budget(cfg: DistillConfig, spent: float, rounds_left: int) -> float | None:
    """Minutes for the next round: what is left of --max-minutes, split evenly over the rounds
    left (at least 1 % of the budget, so a late round still plans an end)."""
    if not cfg.max_minutes:
        return None
    left = max(cfg.max_minutes - spent / 60, 0.01 * cfg.max_minutes)
    return left / rounds_left


def main(argv: list[str] | None = None) -> int:
    cfg, resuming = config_from_args(argv)
    try:
        return distil(cfg, resuming)
    except KeyboardInterrupt:
        cli.exit_after_interrupt(f"interrupted (Ctrl-C) between rounds; every finished round is "
                                 f"saved: continue with --resume {cfg.run_dir}")


def distil(cfg: DistillConfig, resuming: bool = False) -> int:
    """Run (or, ``resuming``, continue) the distillation ``cfg`` describes; the exit code."""
    device = cli.device_from_flag(cfg.device)
    try:
        world = distributed.setup(device, cfg.dist_timeout)
    except ValueError as err:
        cli.fail(str(err))
    if resuming and cfg.world_size != world.size:
        cli.fail(f"--resume: this distillation ran on {cfg.world_size} process(es); resume it on as many")
    cfg.world_size = world.size
    use_tf32_on_cuda(world.device)
    run_dir = prepare_folder(cfg, resuming, world)
    plan = plan_rounds(cfg, world.device)
    write_config(cfg, world)
    first_cfg = round_config(cfg, plan.teacher.config, None, world)
    amp = cli.autocast_from_flag(cfg.precision, world.device)
    data = load_data(first_cfg, world, memory_format_for(world.device, amp))
    if world.is_main:
        chain = " → ".join(str(len(s)) for s in plan.lists)
        budget = f", {cfg.max_minutes:g} minutes in all" if cfg.max_minutes else ""
        print(f"distilling {plan.teacher.path} (step {plan.teacher.step}, objective "
              f"{plan.teacher.config.get('objective', 'eps')}): DDIM steps {chain}, {plan.rounds} "
              f"round{'s' if plan.rounds > 1 else ''}{budget}; the student predicts {cfg.objective}",
              file=sys.stderr)
    spent_before, start = sum(cfg.rounds_seconds.values()), time.perf_counter()
    teacher = plan.teacher
    for r in range(plan.rounds):
        steps = [int(t) for t in plan.lists[r + 1]]
        folder = round_dir(cfg, len(steps))
        record = round_state(folder)
        if record is not None and record["complete"]:
            teacher = load_student(folder, world.device)
            if world.is_main:
                print(f"round {r + 1}/{plan.rounds}: {folder} is done", file=sys.stderr)
            continue
        budget = round_budget(cfg, spent_before + time.perf_counter() - start, plan.rounds - r)
        train_cfg = round_config(cfg, plan.teacher.config, budget, world)
        run = build_round(cfg, plan, r, teacher, train_cfg, world)
        data = replace(data, total_steps=total_steps(train_cfg, data.steps_per_epoch))
        if world.is_main:
            cli.ensure_writable_dir(folder, "--run-dir")
            remove_stale_temp_files([folder / name for name in ROUND_FILES])
        if record is not None:
            restore(run, folder)
            if world.is_main:
                write_metrics(folder / METRICS_FILE, read_metrics(folder / METRICS_FILE, upto=run.step))
        wrap_for_training(run)
        if world.is_main:
            length = f"{budget:.1f} minutes" if budget else f"{run.cfg.max_steps} steps"
            resumed = f", resumed at step {run.step}" if record is not None else ""
            print(f"round {r + 1}/{plan.rounds}: {2 * len(steps)} → {len(steps)} steps, {length}{resumed}, "
                  f"into {folder}", file=sys.stderr)
        try:
            end = train_loop(run, data)
        except TrainingFailed as err:
            if not world.is_main:
                raise SystemExit(1) from None
            cli.fail(str(err), code=1)
        if end.signal:
            world.leave()
            if world.is_main:
                print(f"interrupted in round {r + 1} at step {end.step}: checkpoint saved; continue "
                      f"with --resume {run_dir}", file=sys.stderr)
            return SIGNAL_EXIT_CODES[end.signal]
        run.distilled["complete"] = True
        if world.is_main:
            try:
                save_checkpoint(run.checkpoint_state(), folder / "checkpoint.pt")
            except (CheckpointError, OSError, RuntimeError) as err:
                cli.fail(f"cannot save round {r + 1}'s student: {str(err).splitlines()[0]}", code=1)
            cfg.rounds_seconds[str(len(steps))] = round(end.seconds, 1)
            write_config(cfg, world)
            print(f"round {r + 1}/{plan.rounds}: {len(steps)}-step student after {end.step} steps in "
                  f"{end.seconds:.1f}s", file=sys.stderr)
            if cfg.figures:
                round_figures(run, len(steps))
        teacher = student_of(run, steps, cfg.from_steps)
    world.leave()
    if world.is_main:
        last = round_dir(cfg, len(plan.lists[-1])) / "checkpoint.pt"
        atomic_write(run_dir / "checkpoint.pt", lambda f: f.write(last.read_bytes()))
        took = format_duration(time.perf_counter() - start)
        last_steps = len(plan.lists[-1])
        print(f"distilled to {last_steps} step{'s' if last_steps > 1 else ''} in {took} (this session): "
              f"{run_dir / 'checkpoint.pt'} (each round's student in {run_dir}/steps-NN/)", file=sys.stderr)
        print(f"next: python -m nets.sample --checkpoint {run_dir}   (from Python: "
              f"nets.load(\"{run_dir}\").sample(16))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
