"""The flags of ``python -m nets.train`` and the run config they resolve to.

``build_parser`` holds every flag with its help and default (four groups: data and length,
optimizer, diffusion and model, machine and run folder); ``config_from_args`` turns parsed flags
into a :class:`TrainConfig`, or, with ``--resume``, reads the run's saved config, re-checks every
value with the flag's own parser (:func:`check_saved_values`: a checkpoint may come from a
stranger) and applies the flags a resume may change.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path
from typing import get_args

import diffusion_core as core
from nets import cli
from nets.checkpoint import CheckpointError, load_checkpoint
from nets.pixels import NUM_CLASSES
from nets.training.config import DEFAULT_EPOCHS, LR_SCHEDULES, RESUMABLE_OVERRIDES, TrainConfig, saved_config
from nets.training.preview import parse_preview_every
from nets.unet import UNetConfig

# Config fields that are on/off flags: (the flag that sets True, the flag that sets False).
BOOLEAN_FLAGS = {"conditional": ("--conditional", "--no-conditional"), "compile": ("--compile", None),
                 "keep_checkpoints": ("--keep-checkpoints", None), "figures": (None, "--no-figures"),
                 "preview": (None, "--no-preview")}
NOT_FLAGS = ("unet", "run_dir", "world_size")  # the U-Net's flags are checked by UNetConfig


def build_parser(parser_class: type[cli.Parser] = cli.Parser) -> cli.Parser:
    p = parser_class(prog="python -m nets.train", description="Train a DDPM on MNIST: python -m nets.train.")
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
    g.add_argument("--epochs", type=cli.positive_int,
                   help=f"passes over the data (default {DEFAULT_EPOCHS}; with --max-minutes and "
                   f"neither --epochs nor --max-steps, the clock alone ends the run)")
    g.add_argument("--max-steps", type=cli.positive_int,
                   help="train exactly this many optimizer steps (instead of --epochs)")
    g.add_argument("--max-minutes", type=cli.positive_float,
                   help="a wall-clock budget for training (figures are made after): the pace measured "
                   "over the first steps fixes the run's last step, so the learning rate decays to 0 "
                   "when the clock ends; --max-steps/--epochs still bound it")
    g.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size,
                   help="images per step and process (under torchrun the global batch is this "
                   "times the number of processes)")


def add_optimizer_flags(g, d: TrainConfig) -> None:
    g.add_argument("--lr", type=cli.float_in(0, 1e30), default=d.lr,  # above, AdamW's step overflows
                   help="AdamW peak learning rate")
    g.add_argument("--warmup-steps", type=cli.int_at_least(0), default=d.warmup_steps,
                   help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after the warm-up: a half cosine down to 0 at the run's last step, or "
                   "constant. The last step is --max-steps, else --epochs, or with --max-minutes the "
                   "step the budget reaches at the measured pace (recorded in the checkpoint)")
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
                   help="per-timestep loss weight: uniform (Ho et al. 2020), min-snr (min(SNR, gamma) "
                   "on the x0 scale, Hang et al. 2023) or truncated-snr (max(SNR, 1) on the x0 scale, "
                   "Salimans & Ho 2022; meant for --objective v or x0: on eps it grows as 1/SNR)")
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
                   help="U-Net width at full resolution: 16 is the measured best at a fixed "
                   "wall-clock budget on a CPU, 32 learns more per step (for a run bounded by "
                   "epochs; docs/results.md, the recipe study)")
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
    g.add_argument("--preview-every", type=preview_interval,
                   help="write preview.png and preview-history.png (EMA digits, a fixed seed, "
                   "DPM-Solver++ 2M, 10 calls) every N steps or M minutes: 200 or 2m (default: a "
                   "tenth of the run; previews skip a turn rather than take over 5%% of its time)")
    g.add_argument("--no-preview", dest="preview", action="store_false",
                   help="no previews while training")
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
    if args.epochs is None:  # None in the config: the clock alone bounds the run
        values["epochs"] = None if args.max_minutes and not args.max_steps else DEFAULT_EPOCHS
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
    if saved.get("distilled") is not None:
        cli.fail(f"--resume: {run_dir} is a round of nets.distill, not a training run; continue "
                 f"a distillation with python -m nets.distill --resume on its folder")
    try:
        resumed = saved_config({**saved["config"], "run_dir": str(run_dir)})
        UNetConfig.from_dict(resumed.unet)
        check_saved_values(resumed)
    except (TypeError, ValueError, AttributeError) as err:
        cli.fail(f"--resume: the config saved in {run_dir} is not a training config: {err}")
    defaults = parser.parse_args([])
    for name in RESUMABLE_OVERRIDES:
        if getattr(args, name) != getattr(defaults, name):
            setattr(resumed, name, getattr(args, name))
    return resumed, run_dir, args


def end_flags_given(args: argparse.Namespace) -> bool:
    """Whether the command line moved the run's end (--epochs, --max-steps or --max-minutes)."""
    defaults = build_parser().parse_args([])
    return any(getattr(args, name) != getattr(defaults, name)
               for name in ("epochs", "max_steps", "max_minutes"))


def check_saved_values(cfg: TrainConfig) -> None:
    """Check a resumed config with the flags' own parsers (a checkpoint may come from a
    stranger): each value is parsed as its flag would be; ValueError names the first bad one."""
    checker = build_parser(_RaisingParser)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_FLAGS or value is None:
            continue
        if f.name in BOOLEAN_FLAGS:
            if not isinstance(value, bool):
                raise ValueError(f"--{f.name.replace('_', '-')} = {value!r}: expected true or false")
            continue
        flag = f"--{f.name.replace('_', '-')}"
        try:
            checker.parse_args([flag, str(value)])
        except ValueError as err:
            raise ValueError(f"{flag} = {value!r}: {str(err).removeprefix(f'argument {flag}: ')}") from None
    if cfg.sample_steps is not None and cfg.sample_steps > cfg.timesteps:
        raise ValueError(f"--sample-steps {cfg.sample_steps} exceeds --timesteps {cfg.timesteps}")


def preview_interval(text: str) -> str:
    """--preview-every: steps or minutes, checked; kept as given (it is saved in the config)."""
    try:
        parse_preview_every(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip()


class _RaisingParser(cli.Parser):
    """The trainer's parser, raising ValueError(message) where the command would exit 2."""

    def error(self, message: str):
        raise ValueError(message)
