"""Digits while a run trains: every --preview-every steps or minutes, rank 0 samples a fixed set of
digits from the EMA weights and writes ``preview.png`` and ``preview-history.png`` (one row per
preview, labelled with its step) into the run directory, both atomically.

The digits come from the same x_T (seed ``cfg.seed + 2``) through DPM-Solver++ 2M, a deterministic
ODE solver at ``PREVIEW_SAMPLER``'s 10 network calls (an objective may name its own deterministic
sampler: a consistency tuning previews one call), so from one preview to the next they change
only as the model does. A conditional model shows ``PER_CLASS`` digits of each class, one column
per class. Previews never touch the training's random streams (their generator is their own), so
a run's losses are the same with or without them; at the default interval they skip a turn that
would take them past ``MAX_SHARE`` of the run's time so far, so their cost stays below it whatever
the machine (an interval given with --preview-every is kept as asked).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nets import figures
from nets.files import save_npz_atomic
from nets.pixels import images_to_uint8
from nets.sampling import ChainOptions, DeviceCoefficients, Network, SamplerSettings, sample
from nets.sampling.settings import min_steps
from nets.training.config import PreviewEvery, TrainConfig, parse_preview_every

PREVIEW_SAMPLER = SamplerSettings("dpmpp-2m", steps=10)


def preview_sampler(num_timesteps: int) -> SamplerSettings:
    """PREVIEW_SAMPLER on a model of T = ``num_timesteps``: its 10 calls, or all T where T is
    fewer, by DDIM where T is below the solver's minimum steps (any T trains, so any T previews)."""
    steps = min(PREVIEW_SAMPLER.steps, num_timesteps)
    if steps < min_steps(PREVIEW_SAMPLER.sampler):
        return SamplerSettings("ddim", steps=steps)
    return SamplerSettings(PREVIEW_SAMPLER.sampler, steps=steps)
PER_CLASS = 4  # rows of a conditional preview: 4 × 10 digits
UNCONDITIONAL_DIGITS = 40
ROW = 10  # images per row; a conditional model with more classes shows its first 10
PREVIEWS_PER_RUN = 10  # the default --preview-every: a tenth of the run
MAX_SHARE = 0.05  # of the run's wall time, at most, spent on previews
PREVIEW_FILES = ("preview.png", "preview-history.png", "preview-history.npz")


def preview_every(cfg: TrainConfig, end: int) -> PreviewEvery:
    """--preview-every, or by default a tenth of the run: of --max-minutes where the clock ends
    it, else of its steps (``end``)."""
    if cfg.preview_every is not None:
        return parse_preview_every(cfg.preview_every)
    if cfg.max_minutes:
        return PreviewEvery(minutes=cfg.max_minutes / PREVIEWS_PER_RUN)
    return PreviewEvery(steps=max(1, math.ceil(end / PREVIEWS_PER_RUN)))


class Preview:
    """Rank 0's previews of one training session; :meth:`maybe_write` after every step."""

    def __init__(self, run_dir: Path, net: Network, every: PreviewEvery, seed: int, start_step: int,
                 capped: bool = True, sampler: SamplerSettings | None = None):
        self.run_dir, self.net, self.every, self.capped = run_dir, net, every, capped
        device = net.device
        classes = min(net.model.config.num_classes, ROW)
        self.ncol = classes or ROW
        n = PER_CLASS * classes if classes else UNCONDITIONAL_DIGITS
        gen = torch.Generator(device=device).manual_seed(seed)
        self.x_T = torch.randn((n, *net.model.config.image_shape), generator=gen, device=device)
        y = torch.arange(n, device=device) % classes if classes else None
        self.options = ChainOptions(y=y)
        schedule = net.diffusion.schedule
        sampler = sampler or preview_sampler(schedule.num_timesteps)  # deterministic: it draws no z
        self.coeffs = DeviceCoefficients(sampler.table(schedule)).to(device)
        self.spent, self.last_cost, self.next_minute, self.off = 0.0, 0.0, every.minutes, False
        self.written = 0
        self.steps, self.rows = _read_history(run_dir / "preview-history.npz", start_step)

    def due(self, step: int, elapsed: float) -> bool:
        if self.every.steps:
            return step % self.every.steps == 0
        if elapsed < 60 * self.next_minute:
            return False
        while 60 * self.next_minute <= elapsed:  # the next turn: skipped turns are not made up
            self.next_minute += self.every.minutes
        return True

    def maybe_write(self, step: int, elapsed: float) -> None:
        """Write a preview where one is due and, when ``capped`` (the default interval), previews
        stay within MAX_SHARE of the time so far (the last one's cost stands for the next one's);
        an interval asked for with --preview-every is kept whatever it costs."""
        over = self.capped and self.spent + self.last_cost > MAX_SHARE * elapsed
        if self.off or over or not self.due(step, elapsed):
            return
        t0 = time.perf_counter()
        try:
            self.write(step)
        except (OSError, RuntimeError, ValueError) as err:  # a full disk must not stop the training
            self.off = True
            print(f"preview: cannot write to {self.run_dir}: {_reason(err)}; no more previews in this "
                  f"session (training goes on)", file=sys.stderr, flush=True)
        self.last_cost = time.perf_counter() - t0
        self.spent += self.last_cost
        self.written += 1

    def write(self, step: int) -> None:
        """preview.png (all digits), preview-history.png and .npz (one row per preview)."""
        self.net.model.eval()
        result = sample(self.net, self.coeffs, self.x_T, _no_noise, self.options)  # an ODE: no z
        images = images_to_uint8(result.images)
        figures.save_grid(images, self.run_dir / "preview.png", ncol=self.ncol)
        self.steps.append(step)
        self.rows.append(images[:self.ncol])
        save_npz_atomic(self.run_dir / "preview-history.npz", steps=np.asarray(self.steps, np.int64),
                        images=np.stack(self.rows))
        figures.save_digit_rows(self.run_dir / "preview-history.png",
                                [(f"step {s}", row) for s, row in zip(self.steps, self.rows, strict=True)],
                                "previews: the same noise through the EMA weights as training went on")


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0] if str(err) else type(err).__name__


def _no_noise(_k: int, like: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the preview's ODE solver draws no noise")


def _read_history(path: Path, upto: int) -> tuple[list[int], list[np.ndarray]]:
    """The previews of earlier sessions of a resumed run up to its checkpoint's step ``upto``
    (none if the file is absent or unreadable: the history starts again)."""
    if not path.exists():
        return [], []
    try:
        with np.load(path, allow_pickle=False) as f:
            kept = [(int(s), row) for s, row in zip(f["steps"], f["images"], strict=True) if s <= upto]
    except (OSError, ValueError, KeyError):
        return [], []
    return [s for s, _ in kept], [row for _, row in kept]
