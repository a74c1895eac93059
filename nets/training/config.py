"""The run's config (printed at start, saved in every checkpoint) and its per-step schedules.

:class:`TrainConfig` checks itself once, in ``__post_init__`` (:mod:`nets.fields`): a value from
Python, from the command's flags or from a stranger's saved config is a :class:`ConfigError`
naming the field. Fields marked ``resumable`` are the ones a resumed run may change.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import diffusion_core as core
from nets.data.catalog import named_set
from nets.device import Precision
from nets.fields import ConfigError, changes_on_resume, check_fields, flag_of, integer, number, setting, text
from nets.pixels import NUM_CLASSES
from nets.unet import UNetConfig

DEFAULT_EPOCHS = 10  # the length of a run given neither --epochs, --max-steps nor --max-minutes
UNBOUNDED_STEPS = 10**9  # the bound of a run that the clock alone ends
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES = ("constant", "cosine")
Split = Literal["train", "test"]
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class PreviewEvery:
    """A preview every ``steps`` optimizer steps, or every ``minutes`` of wall time."""

    steps: int | None = None
    minutes: float | None = None

    def describe(self) -> str:
        if self.steps:
            return f"every {self.steps} step{'s' if self.steps > 1 else ''}"
        return f"every {self.minutes:g} minute{'s' if self.minutes != 1 else ''}"


def parse_preview_every(value: str) -> PreviewEvery:
    """``"200"`` → every 200 steps; ``"2m"`` or ``"0.5m"`` → every 2 (0.5) minutes. ValueError else."""
    value = value.strip()
    try:
        if value.endswith("m"):
            minutes = float(value[:-1])
            if not math.isfinite(minutes) or minutes <= 0:
                raise ValueError
            return PreviewEvery(minutes=minutes)
        steps = int(value)
        if steps < 1:
            raise ValueError
        return PreviewEvery(steps=steps)
    except ValueError:
        raise ValueError(f"expected a number of steps (200) or of minutes (2m), got {value!r}") from None


def _preview_rule(value) -> str | None:
    if not isinstance(value, str):
        return f"expected a string such as '200' or '2m', got {value!r}"
    try:
        parse_preview_every(value)
    except ValueError as err:
        return str(err)
    return None


def _unet_rule(value) -> str | None:
    if not isinstance(value, dict):
        return f"expected the U-Net's config as a dict, got {type(value).__name__}"
    try:
        UNetConfig.from_dict(value)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def _channels_rule(value) -> str | None:
    return None if value is None or value in (1, 3) else f"expected 1 (grey) or 3 (colour), got {value!r}"


@dataclass
class TrainConfig:
    """Everything that defines a run; printed at start and saved in every checkpoint."""

    # a named set (mnist, fashion-mnist, kmnist, cifar10) or a folder of images (nets.data)
    dataset: str = setting("mnist", text)
    data_dir: str | None = setting(None, text, resumable=True)  # where a named set's files are: may move
    split: Split = setting("train")  # of a named set; a folder is one split
    image_size: int | None = setting(None, integer(8, 1024))  # None: the data's own
    channels: int | None = setting(None, _channels_rule)  # 1 or 3; None: the data's own
    limit: int | None = setting(None, integer(1))
    holdout: int = setting(0, integer(0))  # the last N images of the split, never trained on
    # None: DEFAULT_EPOCHS, unless --max-minutes bounds the run (then the clock alone)
    epochs: int | None = setting(None, integer(1), resumable=True)
    max_steps: int | None = setting(None, integer(1), resumable=True)
    max_minutes: float | None = setting(None, number(0), resumable=True)
    batch_size: int = setting(64, integer(1))
    lr: float = setting(2e-3, number(0, 1e30))  # above 1e30, AdamW's step overflows
    warmup_steps: int = setting(200, integer(0))
    # after the warm-up, a half cosine to 0 at the run's last step: at equal steps FD 79.0 vs
    # 83.1 for a constant lr (docs/results.md, the recipe study's follow-up)
    lr_schedule: LrSchedule = setting("cosine")
    weight_decay: float = setting(0.0, number(0, 1, low_open=False))
    grad_clip: float = setting(1.0, number(0))
    ema_decay: float = setting(0.999, number(0, 1, low_open=False, high_open=True))
    schedule: core.BetaScheduleName = setting("linear")
    timesteps: int = setting(1000, integer(1))
    objective: core.Objective = setting("eps")
    loss_weighting: core.LossWeighting = setting("min-snr")
    min_snr_gamma: float = setting(5.0, number(0))
    conditional: bool = setting(True)  # sampled at the class frequencies, it generates p(x)
    label_dropout: float = setting(0.1, number(0, 1, low_open=False, high_open=True))
    # the defaults won the equal-budget study (docs/results.md, "The recipe study"): at a
    # fixed wall clock, width 16 and batch 64 buy 3.3x the steps of width 32 / batch 128.
    # Channels, size and classes follow the data when the run starts (nets.unet.unet_for_data);
    # the command's U-Net flags set the rest.
    unet: dict = setting(rule=_unet_rule, flag=False, factory=lambda: UNetConfig(
        base_channels=16, num_classes=NUM_CLASSES).to_dict())
    seed: int = setting(0, integer(0, SEED_MAX))
    device: str = setting("auto", text, resumable=True)
    compile: bool = setting(False, resumable=True)
    precision: Precision = setting("auto", resumable=True)
    run_dir: str = setting("", text)  # "": runs/<timestamp>, chosen when the run starts
    checkpoint_every: int = setting(500, integer(1), resumable=True)
    keep_checkpoints: bool = setting(False, resumable=True)
    log_every: int = setting(25, integer(1), resumable=True)
    num_samples: int = setting(64, integer(1), resumable=True)
    sample_steps: int | None = setting(None, integer(1), resumable=True)  # None: all T
    figures: bool = setting(True, resumable=True)
    preview: bool = setting(True, resumable=True)  # digits while it trains (nets.training.preview)
    preview_every: str | None = setting(None, _preview_rule, resumable=True)  # None: a tenth
    dist_timeout: float = setting(300.0, number(0), resumable=True)
    world_size: int = setting(1, integer(1), flag=False)  # processes that trained it (torchrun)

    def __post_init__(self):
        check_fields(self)
        spec = named_set(self.dataset)
        self.dataset = spec.name if spec is not None else self.dataset  # "MNIST" is "mnist"
        if self.sample_steps is not None and self.sample_steps > self.timesteps:
            raise ConfigError("sample_steps", f"{self.sample_steps} exceeds timesteps {self.timesteps}")
        # a conditional model keeps its dataset's class count (nets.unet.unet_for_data sets it)
        classes = (self.unet.get("num_classes") or NUM_CLASSES) if self.conditional else 0
        self.unet = {**self.unet, "num_classes": classes}


# What a run did before its config had these fields: a resumed old checkpoint keeps its own
# behaviour where today's default differs (min-SNR weights and the cosine decay came later).
BEFORE_THE_FIELD_EXISTED = {"loss_weighting": "uniform", "lr_schedule": "constant"}


def saved_config(values: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint's saved config: ConfigError (a ValueError) on a bad value,
    ValueError on an unknown field."""
    if not isinstance(values, dict):
        raise ValueError(f"the saved config is a {type(values).__name__}, not a dict")
    unknown = sorted(set(values) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown config fields {', '.join(unknown)}")
    return TrainConfig(**{**BEFORE_THE_FIELD_EXISTED, **values})


def resumed_config(saved: TrainConfig, given: dict) -> TrainConfig:
    """The saved run's config with the ``given`` values of its resumable fields; ValueError
    naming any other given field whose value differs from the run's."""
    overrides, refused = changes_on_resume(TrainConfig, saved, given)
    if refused:
        raise ConfigError(refused[0], f"a resumed run keeps its own settings; drop "
                          f"{', '.join(flag_of(name) for name in refused)} (only the length, the "
                          f"machine and the outputs may change)")
    return TrainConfig(**{**asdict(saved), **overrides})


def run_dir_of(cfg: TrainConfig) -> Path:
    """The run's folder: ``run_dir``, or runs/<timestamp> when it is empty."""
    return Path(cfg.run_dir) if cfg.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


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
    """The step the run ends at: --max-steps, else --epochs passes over the data (DEFAULT_EPOCHS
    when neither is given), else (a --max-minutes run without either) no bound but the clock's
    (``nets.training.budget``)."""
    if cfg.max_steps:
        return cfg.max_steps
    epochs = cfg.epochs or (None if cfg.max_minutes else DEFAULT_EPOCHS)
    return steps_per_epoch * epochs if epochs else UNBOUNDED_STEPS
