"""The flags of ``python -m nets.train``: one per :class:`TrainConfig` field of the same name
(``--batch-size`` sets ``batch_size``; a test checks every field has its flag and every flag its
field), the U-Net's flags folded into ``unet``, and the command's own ``--resume`` and
``--redo-figures``. ``build_parser`` holds every flag with its help and default (four groups: data
and length, optimizer, diffusion and model, machine and run folder); :func:`config_values` turns
the flags a command line gave into config fields. The values are checked by the config itself.
"""

from __future__ import annotations

import argparse

from nets import cli
from nets.data.catalog import NAMES
from nets.fields import ConfigError, choices
from nets.training.config import DEFAULT_EPOCHS, TrainConfig, parse_preview_every
from nets.unet import UNetConfig


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.train",
                   description="Train a DDPM on MNIST, another dataset or a folder of images.")
    d = TrainConfig()
    add_data_flags(p.add_argument_group("data and length"), d)
    add_optimizer_flags(p.add_argument_group("optimizer"), d)
    add_diffusion_flags(p.add_argument_group("diffusion and model"), d)
    add_run_flags(p.add_argument_group("machine, run folder, figures"), d)
    return p


def add_data_flags(g, d: TrainConfig) -> None:
    g.add_argument("--dataset", default=d.dataset,
                   help=f"what to train on: {', '.join(NAMES)} (downloaded into --data-dir when "
                   "missing), or a folder of images (class subfolders give the labels; decoded once "
                   "into a cache). The model's channels, size and classes follow the data")
    cli.add_data_dir(g)
    g.add_argument("--split", choices=choices(TrainConfig, "split"), default=d.split,
                   help="which split of a named set to train on")
    g.add_argument("--image-size", type=cli.int_at_least(8),
                   help="train at this size: images are resized (shorter side) and centre-cropped "
                   "(default: the data's own; a folder's most common size, at most 64). 28 and 32 "
                   "get the 3-level U-Net, 64 a 4-level one with attention at 16 and 8")
    g.add_argument("--channels", type=int, choices=(1, 3),
                   help="1: greyscale, 3: colour (default: as the data is)")
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
    g.add_argument("--lr-schedule", choices=choices(TrainConfig, "lr_schedule"), default=d.lr_schedule,
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
    g.add_argument("--schedule", choices=choices(TrainConfig, "schedule"), default=d.schedule,
                   help="beta schedule")
    g.add_argument("--timesteps", type=cli.positive_int, default=d.timesteps,
                   help="diffusion steps T")
    g.add_argument("--objective", choices=choices(TrainConfig, "objective"), default=d.objective,
                   help="what the network predicts")
    g.add_argument("--loss-weighting", choices=choices(TrainConfig, "loss_weighting"),
                   default=d.loss_weighting,
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


UNET_FLAGS = ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions", "dropout")
COMMAND_FLAGS = ("resume", "redo_figures")  # what the command does with a config, not part of it


def config_values(given: dict, base: TrainConfig) -> dict:
    """The TrainConfig fields the ``given`` flags set (``cli.given_flags``), over ``base``: the
    U-Net's flags are folded into its ``unet``; ConfigError naming what does not fit."""
    values = {k: v for k, v in given.items() if k not in UNET_FLAGS and k not in COMMAND_FLAGS}
    for key in ("data_dir", "dataset"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    if any(k in given for k in UNET_FLAGS):
        values["unet"] = unet_from_flags(given, base.unet)
    return values


def unet_from_flags(given: dict, base: dict) -> dict:
    """``base`` (a U-Net config dict) with the given U-Net flags; ConfigError("unet") where the
    result is no U-Net, ConfigError("attention_resolutions") for a size it does not have."""
    unet = dict(base)
    try:
        if "channel_mults" in given:
            unet["channel_mults"] = [int(m) for m in given["channel_mults"].split(",")]
        if "attention_resolutions" in given:
            text = given["attention_resolutions"]
            unet["attention_resolutions"] = [] if text == "none" else [int(r) for r in text.split(",")]
        unet.update({k: given[k] for k in ("base_channels", "num_res_blocks", "dropout") if k in given})
        config = UNetConfig.from_dict(unet)
    except ValueError as err:
        raise ConfigError("unet", str(err)) from None
    unknown = sorted(set(config.attention_resolutions) - set(config.resolutions))
    if unknown and "attention_resolutions" in given:
        raise ConfigError("attention_resolutions", f"{','.join(map(str, unknown))} is not a feature-map "
                          f"size of this U-Net ({','.join(map(str, config.resolutions))})")
    return config.to_dict()


def preview_interval(text: str) -> str:
    """--preview-every: steps or minutes, checked; kept as given (it is saved in the config)."""
    try:
        parse_preview_every(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip()
