"""The config of a distillation (saved as its folder's config.json), checked once on construction."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from nets.device import Precision
from nets.fields import ConfigError, changes_on_resume, check_fields, flag_of, integer, number, setting, text
from nets.training.config import SEED_MAX

CONFIG_FILE = "config.json"
DEFAULT_FROM_STEPS = 64
DEFAULT_STEPS_PER_ROUND = 1000
StudentObjective = Literal["v", "x0"]  # both stable at low SNR; ε is not (Salimans & Ho 2022 §4)
Method = Literal["progressive", "consistency"]
TimeDraw = Literal["lognormal", "uniform"]  # consistency: ECT's log-normal noise level, or the trainer's
Target = Literal["data", "teacher"]  # consistency: x_r from the data (training) or a teacher step
DEFAULT_TO_STEPS = 4
DEFAULT_STAGES = 8  # ECT's Δt halvings over a consistency tuning


def _seconds_rule(value) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, int | float)
                                         for k, v in value.items())
    return None if ok else f"expected {{steps: seconds}}, got {value!r}"


@dataclass
class DistillConfig:
    """Everything that defines a distillation; saved as the run folder's config.json. ``teacher``
    and ``run_dir`` are required by :func:`nets.distillation.distill`, not here."""

    teacher: str = setting("", text)
    run_dir: str = setting("", text)
    method: Method = setting("progressive")
    to_steps: int = setting(DEFAULT_TO_STEPS, integer(1))
    from_steps: int | None = setting(None, integer(2))  # None: 64, or a distilled teacher's own steps
    steps_per_round: int | None = setting(None, integer(1))  # None: 1000 unless max_minutes
    max_minutes: float | None = setting(None, number(0))  # all rounds together, split across them
    stages: int = setting(DEFAULT_STAGES, integer(1))  # consistency: stages of ECT's shrinking Δt
    time_draw: TimeDraw = setting("lognormal")  # consistency: how t is drawn
    target: Target = setting("data")  # consistency: where x_r comes from
    objective: StudentObjective = setting("v")
    lr: float = setting(1e-3, number(0, 1e30))  # half the trainer's peak: each round fine-tunes
    warmup_steps: int = setting(50, integer(0))
    batch_size: int | None = setting(None, integer(1))  # None: the teacher's
    ema_decay: float = setting(0.999, number(0, 1, low_open=False, high_open=True), flag=False)
    grad_clip: float = setting(1.0, number(0), flag=False)
    seed: int = setting(0, integer(0, SEED_MAX))
    data_dir: str | None = setting(None, text, resumable=True)  # None: the teacher's
    device: str = setting("auto", text, resumable=True)
    precision: Precision = setting("auto", resumable=True)
    checkpoint_every: int = setting(200, integer(1), resumable=True)
    log_every: int = setting(25, integer(1), resumable=True)
    figures: bool = setting(True, resumable=True)
    dist_timeout: float = setting(300.0, number(0), resumable=True)
    world_size: int = setting(1, integer(1), flag=False)  # processes that ran it (torchrun)
    rounds_seconds: dict = setting(rule=_seconds_rule, flag=False, factory=dict)  # each finished round's

    def __post_init__(self):
        check_fields(self)
        moved = "to_steps" if self.to_steps != DEFAULT_TO_STEPS else "from_steps" if self.from_steps else None
        if self.method == "consistency" and moved:
            name = moved
            raise ConfigError(name, "applies to --method progressive only (a consistency model samples "
                              "at any number of calls: nets.sample --steps K)")
        if self.method == "progressive" and self.stages != DEFAULT_STAGES:
            raise ConfigError("stages", "applies to --method consistency only")
        if self.method == "progressive" and self.time_draw != "lognormal":
            raise ConfigError("time_draw", "applies to --method consistency only")
        if self.method == "progressive" and self.target != "data":
            raise ConfigError("target", "applies to --method consistency only")


def read_config(run_dir: Path) -> DistillConfig:
    """The config.json of a distillation folder; ValueError naming what is wrong."""
    path = run_dir / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("resume", f"{run_dir} holds no {CONFIG_FILE}: not a nets.distill folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("resume", f"{path} is not a nets.distill config: {err}") from None
    if not isinstance(values, dict) or set(values) - set(DistillConfig.__dataclass_fields__):
        raise ConfigError("resume", f"{path} is not a nets.distill config")
    return DistillConfig(**values)


def resumed_config(run_dir: Path, given: dict) -> DistillConfig:
    """The saved config of the distillation in ``run_dir``, with the resumable fields in ``given``;
    a ConfigError names any other given field that differs from the saved run's."""
    saved = read_config(run_dir)
    overrides, refused = changes_on_resume(DistillConfig, saved, given)
    if refused:
        raise ConfigError(refused[0], f"a resumed distillation continues with its own settings; drop "
                          f"{', '.join(flag_of(name) for name in refused)}")
    return DistillConfig(**{**asdict(saved), **overrides, "run_dir": str(run_dir)})
