"""The bundles a sampling call takes, each a frozen dataclass that checks itself once.

    Network          the U-Net (or a guided wrapper), its diffusion tables and its arithmetic
    SamplerSettings  which reverse process over which steps: picks the core's step table
    Conditioning     the labels a conditional model is asked for, and classifier-free guidance
    SampleOptions    how N digits are produced: batch size, clipping, CUDA graphs, progress,
                     the reverse-diffusion trajectory
    ChainOptions     the same for one batch through the chain (its labels as a tensor)

A bad value is a ``ValueError`` (:class:`nets.fields.ConfigError`) that names it, raised when the
bundle is built, so the loops below, and the commands above, never check an option again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from torch import nn

import diffusion_core as core
from nets.diffusion import Diffusion, as_table
from nets.fields import ConfigError
from nets.pixels import NUM_CLASSES

SAMPLERS = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "sde-dpmpp-2m", "consistency")
MULTISTEP = {"dpmpp-2m": (2, False), "dpmpp-3m": (3, False), "sde-dpmpp-2m": (2, True)}  # order, SDE
SPACINGS = (*get_args(core.Spacing), "logsnr")  # logsnr: uniform in λ (core.log_snr_timesteps)
# The defaults are the best measured for quality per network call (docs/results.md, few-step
# solvers): SDE-DPM-Solver++ 2M at 20 calls. ddpm and ddim default to all T steps (the papers').
DEFAULT_SAMPLER = "sde-dpmpp-2m"
SOLVER_STEPS = 20  # the DPM-Solver++ solvers' steps where none are asked for
# multistep consistency sampling (Song et al. 2023, Alg. 1): its calls where none are asked for,
# the best measured on a nets.distill --method consistency model (docs/results.md)
CONSISTENCY_CALLS = 2


def min_steps(sampler: str) -> int:
    """The fewest steps at which a solver uses its order once: its first step has no history and
    its last step (into ᾱ = 1) is first order, so order p needs p + 1 steps."""
    return MULTISTEP[sampler][0] + 1 if sampler in MULTISTEP else 1


@dataclass(frozen=True)
class Network:
    """What every reverse loop calls: ``model(x_t, t[, y])`` with the tables of its diffusion, the
    network run under autocast to ``autocast_dtype`` (None: fp32); updates stay in x's dtype."""

    model: nn.Module
    diffusion: Diffusion
    autocast_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.diffusion.device


@dataclass(frozen=True)
class SamplerSettings:
    """A reverse process over ``steps`` of the T timesteps (None: all T for ddpm and ddim, 20
    for the DPM-Solver++ solvers, 2 calls for consistency sampling; fewer than T respaces them,
    chosen by ``spacing``). ``consistency`` is multistep consistency sampling (a consistency
    model's: one call per step, re-noised between calls; ``core.consistency_coefficients``) at
    ``times`` (None: ``core.consistency_timesteps``, the first call at T − 1; ``spacing`` does not
    apply). ``eta`` is
    DDIM's η (ddim only, None = 0); ``variance`` DDPM's σ² (ddpm only, None = posterior β̃).
    The default is the best measured per network call: SDE-DPM-Solver++ 2M at 20 steps."""

    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    eta: float | None = None
    variance: str | None = None
    spacing: str = "trailing"
    times: tuple[int, ...] | None = None  # consistency only: its ascending indices (None: the core's rule)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ConfigError("sampler", f"unknown sampler {self.sampler!r} (expected one of "
                              f"{', '.join(SAMPLERS)})")
        if self.spacing not in SPACINGS:
            raise ConfigError("spacing", f"unknown spacing {self.spacing!r} (expected one of "
                              f"{', '.join(SPACINGS)})")
        if self.steps is not None and (not isinstance(self.steps, int | np.integer) or self.steps < 1):
            raise ConfigError("steps", f"must be a positive integer or None, got {self.steps!r}")
        if self.sampler in MULTISTEP and self.steps is not None and self.steps < min_steps(self.sampler):
            raise ConfigError("steps", f"{self.sampler} needs at least {min_steps(self.sampler)} steps "
                              f"(its first step has no history and its last is first order), "
                              f"got {self.steps}")
        if self.times is not None:
            self._check_times()
        if self.eta is not None:
            if self.sampler != "ddim":
                raise ConfigError("eta", f"applies to the ddim sampler only, not {self.sampler}")
            if not 0.0 <= self.eta <= 1.0:
                raise ConfigError("eta", f"must be in [0, 1], got {self.eta}")
        if self.variance is not None:
            if self.sampler != "ddpm":
                raise ConfigError("variance", f"applies to the ddpm sampler only, not {self.sampler}")
            if self.variance not in get_args(core.Variance):
                raise ConfigError("variance", f"unknown variance {self.variance!r} (expected one of "
                                  f"{', '.join(get_args(core.Variance))})")

    def _check_times(self) -> None:
        if self.sampler != "consistency":
            raise ConfigError("times", f"applies to the consistency sampler only, not {self.sampler}")
        times = tuple(int(t) for t in self.times)
        if not times or list(times) != sorted(set(times)) or times[0] < 1:
            raise ConfigError("times", f"must be ascending distinct indices above 0, got {self.times!r}")
        if self.steps is not None and self.steps != len(times):
            raise ConfigError("times", f"{len(times)} times for {self.steps} calls")
        object.__setattr__(self, "times", times)

    @property
    def multistep(self) -> bool:
        return self.sampler in MULTISTEP

    def steps_for(self, num_timesteps: int) -> int:
        """The steps this sampler takes on a model of T = ``num_timesteps``."""
        if self.times is not None:
            return len(self.times)
        if self.steps is not None:
            return self.steps
        if self.sampler == "consistency":
            return min(CONSISTENCY_CALLS, num_timesteps - 1)
        return min(SOLVER_STEPS, num_timesteps) if self.multistep else num_timesteps

    def table(self, schedule: core.DiffusionSchedule) -> core.ReverseCoefficients:
        """The core's step table on ``schedule``; ConfigError if ``steps`` exceeds its T."""
        T = schedule.num_timesteps
        if self.steps is not None and self.steps > T:
            raise ConfigError("steps", f"{self.steps} exceeds the model's T = {T}")
        steps, timesteps = self.steps_for(T), None
        if self.sampler == "consistency":  # f at each time, re-noised between (the core's tables)
            return core.consistency_coefficients(schedule, self.consistency_times(schedule))
        if self.spacing == "logsnr":
            timesteps = core.log_snr_timesteps(schedule, steps)
        elif steps != T:
            timesteps = core.select_timesteps(T, steps, self.spacing)
        if self.sampler == "ddpm":
            return core.ddpm_coefficients(schedule, timesteps, variance=self.variance or "posterior")
        if self.sampler == "ddim":
            return core.ddim_coefficients(schedule, timesteps, eta=self.eta or 0.0)
        order, stochastic = MULTISTEP[self.sampler]
        return core.dpmpp_coefficients(schedule, timesteps, order=order, stochastic=stochastic)

    def consistency_times(self, schedule: core.DiffusionSchedule) -> np.ndarray:
        """The ascending indices of consistency sampling: ``times``, else the core's rule for its
        calls (the first at T − 1, the second of two at the measured best noise level)."""
        T = schedule.num_timesteps
        if self.times is not None:
            if self.times[-1] >= T:
                raise ConfigError("times", f"{self.times[-1]} is not an index of the model's T = {T}")
            return np.asarray(self.times, dtype=np.int64)
        try:
            return core.consistency_timesteps(schedule, self.steps_for(T))
        except ValueError as err:
            raise ConfigError("steps", str(err)) from None

    def describe(self, num_steps: int) -> str:
        """One line: the sampler, its steps, its own option, the spacing."""
        if self.sampler == "consistency":
            at = "" if self.times is None else f" at t = {', '.join(map(str, reversed(self.times)))}"
            return f"consistency {num_steps} call{'s' if num_steps > 1 else ''}{at}"
        detail = {"ddim": f", eta {self.eta or 0.0:g}",
                  "ddpm": f", variance {self.variance or 'posterior'}"}.get(self.sampler, "")
        return f"{self.sampler} {num_steps} steps{detail}, {self.spacing} spacing"

    def record(self, num_steps: int) -> dict:
        """The settings as saved beside the samples."""
        record = {"sampler": self.sampler, "steps": num_steps, "eta": self.eta or 0.0,
                  "variance": self.variance or "posterior", "spacing": self.spacing}
        return record if self.times is None else {**record, "times": list(self.times)}


def make_coefficients(schedule: core.DiffusionSchedule, sampler: str, steps: int | None = None,
                      eta: float = 0.0, variance: str = "posterior",
                      spacing: str = "trailing") -> core.ReverseCoefficients:
    """The core's step tables for ``sampler`` (one of SAMPLERS) over ``steps`` (None = all T);
    ``eta`` applies to ddim, ``variance`` to ddpm (ignored by the others). Checked, and built, by
    :class:`SamplerSettings`."""
    return SamplerSettings(sampler, steps or schedule.num_timesteps, eta if sampler == "ddim" else None,
                           variance if sampler == "ddpm" else None, spacing).table(schedule)


class DeviceCoefficients(nn.Module):
    """A ReverseCoefficients table set as device tensors (float64 where supported)."""

    def __init__(self, coeffs: core.ReverseCoefficients):
        super().__init__()
        self.num_steps = len(coeffs.timesteps)
        self.timesteps_host = [int(t) for t in coeffs.timesteps]  # for labels, never in the loop
        self.history_length = coeffs.history_length  # 0: one-step sampler; 1, 2: multistep
        self.noisy_steps = [bool(s > 0) for s in coeffs.sigma]  # host side: which steps draw z
        self.register_buffer("timesteps", as_table(np.asarray(coeffs.timesteps, dtype=np.int64)))
        for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                     "x0_coef", "eps_coef", "sigma", "x0_prev_coef", "x0_prev2_coef"):
            self.register_buffer(name, as_table(getattr(coeffs, name)))


def _check_guidance(guidance: float | None) -> None:
    if guidance is not None and not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance}")


@dataclass(frozen=True)
class Conditioning:
    """``labels`` (n,) int64 class indices (the model's ``num_classes``: "no label") for a
    conditional model, None
    for an unconditional one; ``guidance`` w of classifier-free guidance ε_u + w(ε_c − ε_u)
    (None or 1: the plain conditional model)."""

    labels: np.ndarray | None = None
    guidance: float | None = None

    def __post_init__(self):
        _check_guidance(self.guidance)
        if self.guidance is not None and self.labels is None:
            raise ValueError("guidance needs labels (an unconditional model has no guidance to give)")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.ndim != 1 or labels.dtype.kind not in "iu":
                raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
            if len(labels) and labels.min() < 0:
                raise ValueError(f"labels must be class indices >= 0, got {labels.min()}")
            labels = labels.astype(np.int64)
            labels.setflags(write=False)
            object.__setattr__(self, "labels", labels)

    @property
    def cfg_weight(self) -> float | None:
        """w where it changes the output (None for w = 1 or no guidance): one pass, not two."""
        return None if self.guidance in (None, 1.0) else float(self.guidance)

    def batch(self, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
        """The labels of images ``start:stop`` as a device tensor (None: unconditional)."""
        if self.labels is None:
            return None
        return torch.tensor(self.labels[start:stop], dtype=torch.long, device=device)  # copied: read-only


@dataclass(frozen=True)
class ChainOptions:
    """One batch through the chain: its labels ``y`` (B,) or (1,) broadcast, CFG ``guidance``,
    x̂0 clipped to [-1, 1], ``num_snapshots`` x_t recorded along the way, ``cuda_graph``
    replaying one captured step (one-step samplers on CUDA only); ``progress``: a progress line
    of the steps with this label (None: none)."""

    y: torch.Tensor | None = None
    guidance: float | None = None
    clip_x0: bool = True
    num_snapshots: int = 0
    cuda_graph: bool = False
    progress: str | None = None

    def __post_init__(self):
        _check_guidance(self.guidance)
        if self.guidance is not None and self.y is None:
            raise ValueError("guidance needs labels y")
        if self.num_snapshots < 0:
            raise ValueError(f"num_snapshots must be >= 0, got {self.num_snapshots}")


@dataclass(frozen=True)
class SampleOptions:
    """How N digits are produced: ``batch_size`` at a time, x̂0 clipped, CUDA graphs, a progress
    line, and the first batch's reverse-diffusion ``trajectory``. None of these changes the
    images but ``batch_size`` (the noise is drawn batch after batch) and ``clip_x0``."""

    batch_size: int = 256
    clip_x0: bool = True
    cuda_graph: bool = False
    progress: bool = False
    trajectory: bool = False

    def __post_init__(self):
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


def labels_from_frequencies(n: int, class_counts: list[int], seed: int) -> np.ndarray:
    """n labels drawn i.i.d. with the training set's class frequencies (seeded): y ~ p(y), so a
    conditional model sampled at them generates p(x) = Σ_y p(y) p(x | y). (n,) int64."""
    p = np.asarray(class_counts, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def class_labels(n: int, request: str | int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``all`` → 0, 1, ..., K-1, 0, 1, ... ; a class index k → n copies of k. (n,) int64."""
    if request == "all":
        return np.arange(n, dtype=np.int64) % num_classes
    return np.full(n, int(request), dtype=np.int64)
