"""What a benchmark runs on: device, precision and threads; the U-Net; the schedule; the images.

Both scripts share these flags so that their results describe the same model on the same
machine. The U-Net is the project's default (``UNet()``) unless the model flags shrink it (the
tests use a tiny one). Its zero-initialised output layers get small random weights, so the
sampler sees non-zero network outputs; the cost of a forward pass does not depend on the values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import diffusion_core as core
from nets import cli
from nets import device as devices
from nets.data import MNIST_ERRORS, default_data_dir, load_mnist
from nets.diffusion import make_schedule
from nets.unet import UNet, UNetConfig


def csv_of(parse):
    """An argparse type: a comma-separated list, each item parsed by ``parse``."""
    def parse_list(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [parse(s) for s in items]
    return parse_list


def precision(text: str) -> str:
    """One of nets.device.PRECISIONS; "auto" is what nets.train / nets.sample use on the device."""
    if text not in devices.PRECISIONS:
        raise argparse.ArgumentTypeError(f"unknown precision {text!r} (use {', '.join(devices.PRECISIONS)})")
    return text


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype for a resolved precision name ("fp32" or "bf16")."""
    return devices.autocast_dtype(name, device)


def add_script_arg(p: argparse.ArgumentParser, flag: str, defaults: dict, quick: dict, help: str,
                   **kwargs) -> None:
    """A flag whose default depends on the script and on --quick: absent unless given, filled in
    by `resolve`; the help states both defaults."""
    name = flag.removeprefix("--").replace("-", "_")
    note = f"default: {_show(defaults[name])}" + (f"; --quick: {_show(quick[name])}" if name in quick else "")
    p.add_argument(flag, default=argparse.SUPPRESS, help=f"{help} ({note})", **kwargs)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def add_common_args(p: argparse.ArgumentParser, defaults: dict, quick: dict) -> None:
    """Device, precision, repeats, output and model flags; ``defaults``/``quick`` per script."""
    add_script_arg(p, "--batch-sizes", defaults, quick, "comma-separated batch sizes",
                   type=csv_of(cli.positive_int))
    cli.add_device(p)
    add_script_arg(p, "--precision", defaults, quick,
                   "comma-separated network precisions: fp32, bf16 (autocast), auto (what the project's "
                   "CLIs pick on this device)", type=csv_of(precision))
    p.add_argument("--threads", type=cli.positive_int,
                   help="torch CPU threads; None: torch's choice, one per core")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time by the wall clock, or by this process's CPU time (for a shared CPU: "
                   "with --threads 1 it leaves out the time other processes take)")
    add_script_arg(p, "--repeats", defaults, quick, "timed repeats per variant", type=cli.positive_int)
    add_script_arg(p, "--warmup", defaults, quick, "untimed calls per variant first",
                   type=cli.int_at_least(0))
    p.add_argument("--quick", action="store_true", help="small settings that finish in about a minute")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    cli.add_seed(p, "seed of weights, images and noise")
    u = UNetConfig()
    p.add_argument("--base-channels", type=cli.positive_int, default=u.base_channels,
                   help="U-Net width at full resolution")
    p.add_argument("--channel-mults", type=csv_of(cli.positive_int),
                   default=_show(list(u.channel_mults)), help="comma-separated width multipliers")
    p.add_argument("--num-res-blocks", type=cli.positive_int, default=u.num_res_blocks,
                   help="residual blocks per resolution")
    p.add_argument("--timesteps", type=cli.positive_int, default=1000, help="diffusion steps T")


def resolve(args: argparse.Namespace, defaults: dict, quick: dict) -> argparse.Namespace:
    """Fill flags left at None from ``quick`` (with --quick) or ``defaults``; set up torch."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, quick.get(name, value) if args.quick else value)
    args.device = cli.device_from_flag(args.device)
    if args.clock == "cpu" and args.device.type != "cpu":
        cli.fail(f"--clock cpu: only for --device cpu (got {args.device})")
    # The project's default precision here; "auto" in the list becomes it, duplicates dropped.
    args.default_precision = devices.precision_name(cli.autocast_from_flag("auto", args.device))
    args.precision = list(dict.fromkeys(
        args.default_precision if p == "auto" else p for p in args.precision))
    if args.threads:
        torch.set_num_threads(args.threads)
    devices.use_tf32_on_cuda(args.device)  # as nets.train does
    return args


def settings(args: argparse.Namespace, *names: str) -> dict:
    """The shared flags' values (and ``names``), for the JSON output."""
    shared = ("batch_sizes", "precision", "threads", "clock", "repeats", "warmup", "quick", "seed",
              "timesteps")
    return {**{n: getattr(args, n) for n in shared + names}, "unet": unet_config(args).to_dict(),
            "default_precision": args.default_precision}


def unet_config(args: argparse.Namespace) -> UNetConfig:
    """The default U-Net unless the model flags change it (attention stays at the lowest size)."""
    mults = tuple(args.channel_mults)
    lowest = UNetConfig().image_size // 2 ** (len(mults) - 1)
    try:
        return UNetConfig(base_channels=args.base_channels, channel_mults=mults,
                          num_res_blocks=args.num_res_blocks, attention_resolutions=(lowest,))
    except ValueError as err:
        cli.fail(f"model flags: {err}")


def build_unet(config: UNetConfig, seed: int) -> UNet:
    """A U-Net with seeded weights; zero-initialised tensors get N(0, 0.02²) instead."""
    torch.manual_seed(seed)
    model = UNet(config)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model


def schedule(timesteps: int) -> core.DiffusionSchedule:
    """The trainer's default: linear β from 1e-4 to 0.02 over T steps."""
    return make_schedule("linear", timesteps)


def training_images(data_dir: str | None, split: str, seed: int,
                    fallback_count: int = 10_000) -> tuple[np.ndarray, str]:
    """(N, 28, 28) uint8 MNIST from ``data_dir`` (never downloaded), else random uint8 images.

    Returns the images and a sentence saying which they are.
    """
    try:
        arrays = load_mnist(data_dir, split, download=False)
        return arrays.images, f"MNIST {split} split ({len(arrays.images)} images) from " \
                              f"{data_dir or default_data_dir()}"
    except MNIST_ERRORS as err:
        print(f"note: MNIST not used ({err}); timing random uint8 images instead", file=sys.stderr)
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (fallback_count, 28, 28), dtype=np.uint8)
        return images, f"random uint8 images ({fallback_count}); MNIST {split} not found"
