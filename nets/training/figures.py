"""The run's three figures, made by rank 0 after training: loss.png (F1), samples.png (F2, EMA
weights, DDPM chain) and reverse.png (F3), as in the seed report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from nets import figures
from nets.diffusion import Diffusion
from nets.pixels import images_to_uint8
from nets.sampling import ChainOptions, DeviceCoefficients, Network, SamplerSettings, sample
from nets.training.config import TrainConfig
from nets.training.metrics_log import METRICS_FILE, read_metrics
from nets.unet import UNet

FIGURE_FILES = ("loss.png", "samples.png", "reverse.png")
REVERSE_CHAINS = 8
REVERSE_SNAPSHOTS = 10


def missing_figures(run_dir: Path) -> list[str]:
    return [name for name in FIGURE_FILES if not (run_dir / name).exists()]


def make_figures(cfg: TrainConfig, run_dir: Path, ema: UNet, diffusion: Diffusion,
                 device: torch.device, amp_dtype: torch.dtype | None = None) -> None:
    """F1 loss.png, F2 samples.png (EMA weights) and F3 reverse.png in the run directory."""
    rows = read_metrics(run_dir / METRICS_FILE)
    if rows:
        figures.plot_loss(np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows]),
                          np.array([r["epoch"] for r in rows]), run_dir / "loss.png")
    table = SamplerSettings("ddpm", cfg.sample_steps).table(diffusion.schedule)  # the seed report: DDPM
    coeffs = DeviceCoefficients(table).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    x_T = torch.randn((cfg.num_samples, *ema.config.image_shape), generator=gen, device=device)
    y = None
    if cfg.conditional:  # one class after another, guidance w = 1 (plain conditional)
        y = torch.arange(cfg.num_samples, device=device) % ema.config.num_classes
    ema.eval()
    t0 = time.perf_counter()
    result = sample(Network(ema, diffusion, amp_dtype), coeffs, x_T,
                    lambda k, like: torch.randn(like.shape, generator=gen, device=device),
                    ChainOptions(y=y, num_snapshots=REVERSE_SNAPSHOTS))
    print(f"sampled {cfg.num_samples} images ({coeffs.num_steps} DDPM steps) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    figures.save_grid(images_to_uint8(result.images), run_dir / "samples.png")
    chains = min(REVERSE_CHAINS, cfg.num_samples)
    snaps = np.stack([images_to_uint8(s[:chains]) for s in result.snapshots])  # (S, N, H, W[, 3])
    figures.plot_reverse(snaps, result.snapshot_timesteps, run_dir / "reverse.png")
    print(f"figures written to {run_dir}", file=sys.stderr)
