"""The run's config (printed at start, saved in every checkpoint) and its per-step schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nets.pixels import NUM_CLASSES
from nets.unet import UNetConfig

DEFAULT_EPOCHS = 10
UNBOUNDED_STEPS = 10**9  # the bound of a run that the clock alone ends (epochs None)


@dataclass
class TrainConfig:
    """Everything that defines a run; printed at start and saved in every checkpoint."""

    data_dir: str | None = None
    split: str = "train"
    limit: int | None = None
    holdout: int = 0  # the last N images of the split, never trained on (nets.evaluate's reference)
    epochs: int | None = DEFAULT_EPOCHS  # None: a --max-minutes run bounded by the clock alone
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    # after the warm-up, a half cosine to 0 at the run's last step: at equal steps FD 79.0 vs
    # 83.1 for a constant lr (docs/results.md, the recipe study's follow-up)
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: str = "linear"
    timesteps: int = 1000
    objective: str = "eps"
    loss_weighting: str = "min-snr"
    min_snr_gamma: float = 5.0
    conditional: bool = True  # sampled at labels drawn from the class frequencies, it generates p(x)
    label_dropout: float = 0.1
    # the defaults won the equal-budget study (docs/results.md, "The recipe study"): at a
    # fixed wall clock, width 16 and batch 64 buy 3.3x the steps of width 32 / batch 128
    unet: dict = field(default_factory=lambda: UNetConfig(base_channels=16,
                                                          num_classes=NUM_CLASSES).to_dict())
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"
    run_dir: str = ""
    checkpoint_every: int = 500
    keep_checkpoints: bool = False
    log_every: int = 25
    num_samples: int = 64
    sample_steps: int | None = None
    figures: bool = True
    preview: bool = True  # digits while it trains (nets.training.preview)
    preview_every: str | None = None  # "N" steps or "Mm" minutes; None: a tenth of the run
    dist_timeout: float = 300.0
    world_size: int = 1  # processes that trained it (torchrun's WORLD_SIZE), not a flag


# What a run did before its config had these fields: a resumed old checkpoint keeps its own
# behaviour where today's default differs (min-SNR weights and the cosine decay came later).
BEFORE_THE_FIELD_EXISTED = {"loss_weighting": "uniform", "lr_schedule": "constant"}


def saved_config(values: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint's saved config (TypeError on an unknown field)."""
    return TrainConfig(**{**BEFORE_THE_FIELD_EXISTED, **values})


# Flags that may change when a run is resumed (to extend it or move it); all others are fixed.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "device", "compile", "precision",
                       "checkpoint_every", "keep_checkpoints", "log_every", "figures", "num_samples",
                       "sample_steps", "dist_timeout", "preview", "preview_every")


LR_SCHEDULES = ("constant", "cosine")


def lr_at(step: int, cfg: TrainConfig, end: int) -> float:
    """The lr of step ``step`` (0-based) of a run that ends at step ``end``: linear warm-up to the
    peak over --warmup-steps, then constant, or a half cosine from the peak at the warm-up's end
    to 0 at ``end`` (never reached: the last step, ``end - 1``, still moves the weights)."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    done = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)))
    return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * done))


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """EMA warm-up so that the random initial weights do not dominate short runs."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The step the run ends at: --max-steps, else --epochs passes over the data, else (a
    --max-minutes run without either) no bound but the clock's (``nets.training.budget``)."""
    if cfg.max_steps:
        return cfg.max_steps
    return steps_per_epoch * cfg.epochs if cfg.epochs else UNBOUNDED_STEPS
