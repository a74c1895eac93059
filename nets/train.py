"""Train a DDPM on MNIST: ``python -m nets.train``.

Reads top to bottom: config → data → model → optimizer → loop → checkpoint → figures. The work
lives in ``nets.training``; this module parses the flags, resolves a resumed run's config, and
reports. Every run directory ends up holding ``checkpoint.pt`` (raw and EMA weights, optimizer,
RNG states, the resolved config), ``metrics.jsonl`` (one row per step), ``config.json`` and the
seed report's three figures: ``loss.png``, ``samples.png`` and ``reverse.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import get_args

import torch

import diffusion_core as core
from nets import cli
from nets.checkpoint import CheckpointError, load_checkpoint
from nets.data import MnistArrays, training_and_held_out
from nets.device import describe_precision, use_tf32_on_cuda
from nets.files import remove_stale_temp_files, write_json_atomic
from nets.pixels import NUM_CLASSES
from nets.training import distributed
from nets.training.config import LR_SCHEDULES, RESUMABLE_OVERRIDES, TrainConfig, saved_config
from nets.training.distributed import World
from nets.training.figures import make_figures, missing_figures
from nets.training.loop import SIGNAL_EXIT_CODES, TrainingFailed, train_loop
from nets.training.metrics_log import METRICS_FILE, read_metrics, write_metrics
from nets.training.run import TrainingData, TrainingRun, build_run, restore, training_data, wrap_for_training
from nets.unet import UNetConfig

RUN_FILES = ("checkpoint.pt", METRICS_FILE, "config.json")  # written atomically: may leave temp files


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.train", description=__doc__.splitlines()[0])
    d = TrainConfig()
    add_data_flags(p.add_argument_group("data and length"), d)
    add_optimizer_flags(p.add_argument_group("optimizer"), d)
    add_diffusion_flags(p.add_argument_group("diffusion and model"), d)
    add_run_flags(p.add_argument_group("machine, run folder, figures"), d)
    return p


def add_data_flags(g, d: TrainConfig) -> None:
    cli.add_data_dir(g)
    g.add_argument("--split", choices=["train", "test"], default=d.split,
                   help="which MNIST split to train on")
    g.add_argument("--limit", type=cli.positive_int, help="use only the first N images")
    g.add_argument("--holdout", type=cli.int_at_least(0), default=d.holdout,
                   help="keep the last N images of the split out of training, recorded in the run: "
                   "nets.evaluate --checkpoint compares samples with exactly those")
    g.add_argument("--epochs", type=cli.positive_int, default=d.epochs, help="passes over the data")
    g.add_argument("--max-steps", type=cli.positive_int,
                   help="train exactly this many optimizer steps (instead of --epochs)")
    g.add_argument("--max-minutes", type=cli.positive_float,
                   help="stop training after this much wall time (figures are made after)")
    g.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size,
                   help="images per step and process (under torchrun the global batch is this "
                   "times the number of processes)")


def add_optimizer_flags(g, d: TrainConfig) -> None:
    g.add_argument("--lr", type=cli.float_in(0, 1e30), default=d.lr,  # above, AdamW's step overflows
                   help="AdamW peak learning rate")
    g.add_argument("--warmup-steps", type=cli.int_at_least(0), default=d.warmup_steps,
                   help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after the warm-up: a half cosine down to 0 at the run's last step "
                   "(--max-steps, else --epochs), or constant. --max-minutes does not move the "
                   "end: for a time budget give --max-steps, about what the budget buys (this "
                   "2-core CPU: 4,000 steps of the default model in 15-22 minutes)")
    g.add_argument("--weight-decay", type=cli.float_in(0, 1, low_open=False),
                   default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=cli.positive_float, default=d.grad_clip,
                   help="clip the gradient's global norm to this")
    g.add_argument("--ema-decay", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=d.ema_decay, help="EMA decay (warmed up as min(decay, (1+n)/(10+n)))")


def add_diffusion_flags(g, d: TrainConfig) -> None:
    g.add_argument("--schedule", choices=get_args(core.BetaScheduleName), default=d.schedule,
                   help="beta schedule")
    g.add_argument("--timesteps", type=cli.positive_int, default=d.timesteps,
                   help="diffusion steps T")
    g.add_argument("--objective", choices=get_args(core.Objective), default=d.objective,
                   help="what the network predicts")
    g.add_argument("--loss-weighting", choices=get_args(core.LossWeighting), default=d.loss_weighting,
                   help="per-timestep loss weight: uniform (Ho et al. 2020) or min-snr "
                   "(min(SNR, gamma) on the x0 scale, Hang et al. 2023)")
    g.add_argument("--min-snr-gamma", type=cli.positive_float, default=d.min_snr_gamma,
                   help="with --loss-weighting min-snr: the SNR cap gamma")
    g.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=d.conditional,
                   help="class-conditional model (labels dropped with --label-dropout, for "
                   "classifier-free guidance); nets.sample draws its labels from the training "
                   "class frequencies, so it generates p(x) — at equal budget better than an "
                   "unconditional model (docs/results.md, the recipe study); --no-conditional: "
                   "an unconditional model")
    g.add_argument("--label-dropout", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=d.label_dropout, help="with --conditional: probability a label is dropped")
    u = UNetConfig.from_dict(d.unet)
    g.add_argument("--base-channels", type=cli.positive_int, default=u.base_channels,
                   help="U-Net width at full resolution; 16 buys 2x the steps of 32 per minute on "
                   "a CPU, while 32 learns more per step: for a run bounded by epochs, not "
                   "minutes (a GPU, the full 60k), try 32 with --batch-size 128")
    g.add_argument("--channel-mults", default=",".join(map(str, u.channel_mults)),
                   help="comma-separated width multipliers, one per resolution")
    g.add_argument("--num-res-blocks", type=cli.positive_int, default=u.num_res_blocks,
                   help="residual blocks per resolution")
    g.add_argument("--attention-resolutions", default=",".join(map(str, u.attention_resolutions)),
                   help="comma-separated feature-map sizes (28, 14, 7 by default) whose residual "
                   "blocks get self-attention, or 'none'; the bottleneck always has one")
    g.add_argument("--dropout", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=u.dropout, help="dropout inside residual blocks")


def add_run_flags(g, d: TrainConfig) -> None:
    cli.add_seed(g, "seed of every random draw", d.seed)
    cli.add_device(g, d.device)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    cli.add_precision(g, "Weights, optimizer and loss stay fp32", d.precision)
    g.add_argument("--dist-timeout", type=cli.positive_float, default=d.dist_timeout,
                   help="under torchrun: seconds a process waits for the others before the job fails")
    g.add_argument("--run-dir", help="output folder (default runs/<timestamp>)")
    g.add_argument("--resume", type=cli.existing_path, help="continue the run in this directory")
    g.add_argument("--checkpoint-every", type=cli.positive_int, default=d.checkpoint_every,
                   help="write a checkpoint every N steps (and always at the end)")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep every checkpoint as checkpoint-<step>.pt (an early one can "
                   "guide sampling: nets.sample --guide-model)")
    g.add_argument("--log-every", type=cli.positive_int, default=d.log_every,
                   help="fetch losses from the device and log them every N steps")
    g.add_argument("--num-samples", type=cli.positive_int, default=d.num_samples,
                   help="digits in samples.png")
    g.add_argument("--sample-steps", type=cli.positive_int,
                   help="DDPM steps for the figures (default: all T; fewer = respaced DDPM)")
    g.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip sampling and the figures at the end")
    g.add_argument("--redo-figures", action="store_true",
                   help="with --resume of a run that has nothing left to train: draw its figures "
                   "again (by default only missing ones are made)")


def config_from_args(argv: list[str] | None) -> tuple[TrainConfig, Path | None, argparse.Namespace]:
    """The run's config, the run directory to resume (or None), and the parsed flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mults = tuple(int(m) for m in args.channel_mults.split(","))
        attention = () if args.attention_resolutions == "none" else tuple(
            int(r) for r in args.attention_resolutions.split(","))
        unet = UNetConfig(base_channels=args.base_channels, channel_mults=mults,
                          num_res_blocks=args.num_res_blocks, attention_resolutions=attention,
                          dropout=args.dropout, num_classes=NUM_CLASSES if args.conditional else 0)
    except ValueError as err:
        parser.error(f"argument --channel-mults/--base-channels/--attention-resolutions: {err}")
    unknown = sorted(set(attention) - set(unet.resolutions))
    if unknown and args.attention_resolutions != parser.get_default("attention_resolutions"):
        parser.error(f"argument --attention-resolutions: {','.join(map(str, unknown))} is not a "
                     f"feature-map size of this U-Net ({','.join(map(str, unet.resolutions))})")
    if args.sample_steps and args.sample_steps > args.timesteps:
        parser.error(f"argument --sample-steps: {args.sample_steps} exceeds --timesteps "
                     f"{args.timesteps}")
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["unet"] = unet.to_dict()
    values["data_dir"] = str(args.data_dir) if args.data_dir else None
    values["run_dir"] = args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = TrainConfig(**values)
    if args.resume is None:
        return cfg, None, args
    # Resume: the saved config wins, except the flags that may extend or move a run.
    if args.resume.is_file() and args.resume.name != "checkpoint.pt":
        parser.error(f"argument --resume: expected a run directory or its checkpoint.pt, got "
                     f"{args.resume}")
    run_dir = args.resume if args.resume.is_dir() else args.resume.parent
    try:
        saved = load_checkpoint(run_dir)
    except CheckpointError as err:
        cli.fail(f"--resume: {err}")
    try:
        resumed = saved_config({**saved["config"], "run_dir": str(run_dir)})
        UNetConfig.from_dict(resumed.unet)
        check_saved_values(parser, resumed)
    except (TypeError, ValueError, AttributeError) as err:
        cli.fail(f"--resume: the config saved in {run_dir} is not a training config: {err}")
    defaults = parser.parse_args([])
    for name in RESUMABLE_OVERRIDES:
        if getattr(args, name) != getattr(defaults, name):
            setattr(resumed, name, getattr(args, name))
    return resumed, run_dir, args


def check_saved_values(parser: cli.Parser, cfg: TrainConfig) -> None:
    """Check a resumed config with the flags' own parsers: a checkpoint may come from a stranger."""
    for action in parser._actions:
        value = getattr(cfg, action.dest, None)
        if value is None or action.dest == "run_dir" or not action.option_strings:
            continue
        try:
            if action.nargs == 0 and not isinstance(value, bool):  # --conditional, --no-figures
                raise ValueError("expected true or false")
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"expected one of {', '.join(action.choices)}")
            if action.type is not None:
                action.type(str(value))
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{action.option_strings[0]} = {value!r}: {err}") from None
    if cfg.sample_steps is not None and cfg.sample_steps > cfg.timesteps:
        raise ValueError(f"--sample-steps {cfg.sample_steps} exceeds --timesteps {cfg.timesteps}")


def join_world(cfg: TrainConfig, resume_dir: Path | None) -> World:
    """This process's place under torchrun (one process without it) on the --device; a resumed
    run keeps its global batch on any number of processes."""
    device = cli.device_from_flag(cfg.device)
    try:
        world = distributed.setup(device, cfg.dist_timeout)
    except ValueError as err:
        cli.fail(str(err))
    if resume_dir is not None and cfg.world_size != world.size:
        try:
            cfg.batch_size = distributed.per_rank_batch(cfg.batch_size, cfg.world_size, world.size)
        except ValueError as err:
            cli.fail(f"--resume: {err}")
    cfg.world_size = world.size
    use_tf32_on_cuda(world.device)
    return world


def prepare_run_dir(cfg: TrainConfig, resume_dir: Path | None, world: World) -> Path:
    """The run directory, proven writable, cleared of the temp files a killed write left, holding
    config.json; rank 0 alone prints the config and writes (a fresh run never reuses a run's
    folder)."""
    run_dir = Path(cfg.run_dir)
    if resume_dir is None and (run_dir / "checkpoint.pt").exists():  # never clobber a run
        cli.fail(f"--run-dir: {cfg.run_dir} already holds a run's checkpoint.pt; continue it with "
                 f"--resume {cfg.run_dir} or choose another --run-dir")
    if not world.is_main:
        return run_dir
    cli.ensure_writable_dir(run_dir, "--run-dir")
    for tmp in remove_stale_temp_files([run_dir / name for name in RUN_FILES]):
        print(f"removed {tmp.name}, left by a write that was killed", file=sys.stderr)
    print(json.dumps(asdict(cfg), indent=1))
    try:
        write_json_atomic(run_dir / "config.json", asdict(cfg))
    except OSError as err:
        cli.fail(f"--run-dir: cannot write {run_dir / 'config.json'}: {err.strerror or err}")
    return run_dir


def load_data(cfg: TrainConfig, world: World, memory_format) -> TrainingData:
    with world.local_main_first():  # one download per machine
        arrays = cli.mnist_or_exit(cfg.data_dir, cfg.split)
    try:
        train_rows, held_rows = training_and_held_out(len(arrays), cfg.limit, cfg.holdout)
        data = training_data(MnistArrays(arrays.images[train_rows], arrays.labels[train_rows]), cfg,
                             world, memory_format)
    except ValueError as err:
        cli.fail(str(err))
    if world.is_main and cfg.holdout:
        print(f"held out: MNIST {cfg.split}[{held_rows.start}:{held_rows.stop}] ({cfg.holdout} images), "
              f"never trained on", file=sys.stderr)
    if world.is_main:
        print(f"data: {data.count} images ({cfg.split}), {data.steps_per_epoch} steps/epoch, "
              f"{data.total_steps} steps, device {world.device}", file=sys.stderr)
        print(f"batch: {data.global_batch} images per step = {cfg.batch_size} per process × "
              f"{world.size} process{'es' if world.size > 1 else ''}; peak lr {cfg.lr:g}, never "
              f"scaled with the batch{lr_decay_note(cfg, data.total_steps)}", file=sys.stderr)
    return data


def lr_decay_note(cfg: TrainConfig, end: int) -> str:
    """How the lr decays, for the start-up report ('' for a constant lr)."""
    if cfg.lr_schedule == "constant":
        return ""
    note = f"; {cfg.lr_schedule} decay to 0 at step {end}"
    return note + (" unless --max-minutes stops it first" if cfg.max_minutes else "")


def resume_or_report(run: TrainingRun, resume_dir: Path | None) -> None:
    """Restore ``run`` from ``resume_dir`` when resuming (exit 2 on a bad checkpoint); rank 0
    reports the step, the model's size and the arithmetic."""
    if resume_dir is not None:
        try:
            restore(run, resume_dir)
        except CheckpointError as err:
            cli.fail(f"--resume: {err}")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            cli.fail(f"--resume: {resume_dir} is not a complete training checkpoint: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if run.world.is_main:
        if resume_dir is not None:
            print(f"resumed from step {run.step}", file=sys.stderr)
        print(f"model: {sum(p.numel() for p in run.model.parameters()):,} parameters",
              file=sys.stderr)
        fmt = "channels_last" if run.memory_format == torch.channels_last else "contiguous"
        print(f"precision: {describe_precision(run.amp_dtype)} (--precision {run.cfg.precision} on "
              f"{run.world.device.type}), {fmt} activations", file=sys.stderr)


def cut_metrics_to_checkpoint(run: TrainingRun) -> None:
    """Drop metrics.jsonl rows after the checkpoint's step (a kill after a log, before a save)."""
    if not run.world.is_main:
        return
    path = run.run_dir / METRICS_FILE
    try:
        write_metrics(path, read_metrics(path, upto=run.step))
    except OSError as err:
        cli.fail(f"--run-dir: cannot write {path}: {err.strerror or err}")


def nothing_to_train(run: TrainingRun, data: TrainingData, redo_figures: bool) -> int:
    """A resumed run already at or past its last step: say so, make only missing figures."""
    cfg = run.cfg
    if not run.world.is_main:
        return 0
    flag = "--max-steps" if cfg.max_steps else "--epochs"
    print(f"nothing to train: {run.run_dir} is already at step {run.step} and "
          f"{flag} {cfg.max_steps or cfg.epochs} ends at step {data.total_steps}; give a larger "
          f"{flag} to train on", file=sys.stderr)
    missing = missing_figures(run.run_dir)
    if cfg.figures and (missing or redo_figures):
        make_figures(cfg, run.run_dir, run.ema, run.diffusion, run.world.device, run.amp_dtype)
    elif cfg.figures:
        print("its figures are there (draw them again with --redo-figures)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ---- config -------------------------------------------------------------------------------
    cfg, resume_dir, args = config_from_args(argv)
    try:
        world = join_world(cfg, resume_dir)
        run_dir = prepare_run_dir(cfg, resume_dir, world)
        # ---- model, diffusion, optimizer; then data in the model's memory format -------------
        run = build_run(cfg, world, run_dir, cli.autocast_from_flag(cfg.precision, world.device))
        data = load_data(cfg, world, run.memory_format)
        run.class_counts = torch.bincount(data.labels.cpu(), minlength=NUM_CLASSES).tolist()
        resume_or_report(run, resume_dir)
    except KeyboardInterrupt:
        cli.exit_after_interrupt("interrupted (Ctrl-C) before training started; nothing to save")
    if resume_dir is not None and run.step >= data.total_steps:
        world.leave()
        return nothing_to_train(run, data, args.redo_figures)
    cut_metrics_to_checkpoint(run)
    wrap_for_training(run)

    # ---- the loop, with its checkpoints --------------------------------------------------------
    try:
        end = train_loop(run, data)
    except TrainingFailed as err:
        if not world.is_main:
            raise SystemExit(1) from None  # every rank saw the same losses; rank 0 says why
        cli.fail(str(err), code=1)
    world.leave()  # every rank meets here: no rank exits (and so gets the job stopped) early
    if end.signal:
        if world.is_main:
            print(f"interrupted at step {end.step}: checkpoint saved; continue with "
                  f"--resume {run_dir}", file=sys.stderr)
        return SIGNAL_EXIT_CODES[end.signal]
    if world.is_main:
        print(f"trained to step {end.step} in {end.seconds:.1f}s", file=sys.stderr)

    # ---- figures (rank 0 alone) ----------------------------------------------------------------
    if cfg.figures and world.is_main:
        try:
            make_figures(cfg, run_dir, run.ema, run.diffusion, world.device, run.amp_dtype)
        except KeyboardInterrupt:
            cli.exit_after_interrupt(f"interrupted (Ctrl-C) while making the figures; the checkpoint "
                                     f"at step {end.step} is saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
