"""The training loop: steps, the log of losses, the NaN check, checkpoints, signals, time limit.

Per step the loop draws a batch and takes an optimizer step on the device, with no host sync.
At each log step (every --log-every, and whenever it saves) it fetches the buffered losses once,
stops the run if any is not finite, and appends them to metrics.jsonl. At each checkpoint step
(every --checkpoint-every, the last step, a caught SIGINT/SIGTERM, the --max-minutes limit) it
saves: only ever after every loss since the last save was checked. Under torchrun the ranks
vote on stopping at the steps where they all log, so that all stop at the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from nets.checkpoint import save_checkpoint
from nets.progress import Progress, format_duration
from nets.training.budget import ClockPlan
from nets.training.config import TrainConfig, ema_decay_at, lr_at
from nets.training.metrics_log import METRICS_FILE, append_metrics
from nets.training.run import TrainingData, TrainingRun
from nets.training.step import Batch, Learner, draw_batch, epoch_permutation, train_step

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number


class TrainingFailed(RuntimeError):
    """The run cannot go on (a non-finite loss, a checkpoint or log that cannot be written); the
    message ends by saying what is kept. Rank 0 reports it; other ranks only exit."""


@dataclass(frozen=True)
class LoopEnd:
    step: int  # the step reached (and saved, unless the loop ended at a non-checkpoint step)
    signal: int | None  # the signal that stopped it, or None (finished or out of time)
    seconds: float


@dataclass
class _Signals:
    caught: int | None = None


@contextlib.contextmanager
def caught_signals() -> Iterator[_Signals]:
    """SIGINT and SIGTERM set ``caught`` instead of ending the process; handlers restored after."""
    box = _Signals()

    def on_signal(signum, _frame):
        box.caught = signum

    old = {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT_CODES}
    try:
        yield box
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class StopRequest:
    signal: int | None
    timed_out: bool

    def __bool__(self) -> bool:
        return bool(self.signal or self.timed_out)


def stop_vote(run: TrainingRun, end: int, signum: int | None, timed_out: bool) -> StopRequest:
    """This step's stop request; under torchrun the ranks' requests combined at the steps where
    all of them log (elsewhere none stops), so that every rank stops at the same step."""
    cfg, world, step = run.cfg, run.world, run.step
    if world.size > 1:
        at_log = step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == end
        signum, timed_out = world.agree_to_stop(signum, timed_out) if at_log else (None, False)
    return StopRequest(signum, bool(timed_out))


class LossLog:
    """The losses since the last flush, on the device, and the learning rates they were trained
    at; slot i holds step ``logged_to + i``, so a run resumed at any step (not only a multiple of
    --log-every) logs and checks the right values."""

    def __init__(self, run: TrainingRun, data: TrainingData):
        self.buffer = torch.zeros(max(1, min(run.cfg.log_every, data.total_steps)), device=run.world.device)
        self.lrs: list[float] = []
        self.logged_to = run.step

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.buffer[step - self.logged_to] = loss
        self.lrs.append(lr)

    def flush(self, run: TrainingRun, data: TrainingData) -> list[dict]:
        """The rows since the last flush, losses averaged over ranks: the loop's one host sync."""
        losses = run.world.mean(self.buffer[: run.step - self.logged_to]).tolist()
        rows = [{"step": s + 1, "epoch": s // data.steps_per_epoch, "loss": v, "lr": lr}
                for s, v, lr in zip(range(self.logged_to, run.step), losses, self.lrs, strict=True)]
        self.logged_to, self.lrs = run.step, []
        return rows


def check_losses_finite(rows: list[dict], run_dir: Path) -> None:
    """TrainingFailed at the first non-finite loss: the run has diverged (its checkpoint is older)."""
    bad = next((r for r in rows if not math.isfinite(r["loss"])), None)
    if bad is not None:
        raise TrainingFailed(f"non-finite loss {bad['loss']} at step {bad['step']}; the last "
                             f"good checkpoint in {run_dir} is kept")


def kept_checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}.pt"


def save(run: TrainingRun) -> None:
    """The checkpoint of every rank's (checked identical) weights, written by rank 0 atomically."""
    run.world.check_replicas_agree({"model": run.model, "ema": run.ema})
    if not run.world.is_main:
        return
    try:
        state = run.checkpoint_state()
        save_checkpoint(state, run.run_dir / "checkpoint.pt")
        if run.cfg.keep_checkpoints:  # earlier snapshots, e.g. a guide for autoguidance
            save_checkpoint(state, run.run_dir / kept_checkpoint_name(run.step))
    except (ValueError, OSError, RuntimeError) as err:  # NaN weights, a full disk; torch's zip
        # writer may turn a failed write into RuntimeError
        raise TrainingFailed(f"step {run.step}: cannot save a checkpoint: {str(err).splitlines()[0]}; "
                             f"the last good checkpoint in {run.run_dir} is kept") from None


def log_rows(run: TrainingRun, rows: list[dict]) -> None:
    """Append to metrics.jsonl (rank 0); a full disk is a TrainingFailed, not a traceback."""
    if not run.world.is_main:
        return
    try:
        append_metrics(run.run_dir / METRICS_FILE, rows)
    except OSError as err:
        raise TrainingFailed(f"step {run.step}: cannot append to {run.run_dir / METRICS_FILE}: "
                             f"{err.strerror or err}; the last good checkpoint in {run.run_dir} "
                             f"is kept") from None


class DataOrder:
    """The order the loop walks the data in: one permutation per epoch, a function of (seed,
    epoch) alone (so a resumed run sees the same), drawn when a step first reaches the epoch;
    each rank keeps its ``rows`` of every global batch."""

    def __init__(self, data: TrainingData, seed: int, rows: slice):
        self.data, self.seed, self.rows = data, seed, rows
        self.epoch, self.perm = -1, None

    def batch(self, step: int, gen: torch.Generator, cfg: TrainConfig) -> Batch:
        """Step ``step``'s batch: its images and labels, and t, ε and label dropout from ``gen``."""
        data = self.data
        epoch, pos = divmod(step, data.steps_per_epoch)
        if epoch != self.epoch:
            self.epoch, self.perm = epoch, epoch_permutation(self.seed, epoch, data.count, data.images.device)
        idx = self.perm[pos * data.global_batch:(pos + 1) * data.global_batch]
        return draw_batch(data.images, data.labels, idx, self.rows, gen, cfg)


def take_step(run: TrainingRun, learner: Learner, order: DataOrder, end: int) -> tuple[torch.Tensor, float]:
    """One optimizer step of ``run`` at its step, in a run that ends at ``end``: (the loss as a
    device tensor, the lr it used). What the loop repeats, and what benchmarks/train_speed.py times."""
    cfg, step = run.cfg, run.step
    lr = lr_at(step, cfg, end)
    follow_run = getattr(learner.objective, "at_step", None)
    if follow_run is not None:  # an objective that changes over the run (consistency tuning's Δt)
        follow_run(step, end)
    loss = train_step(learner, order.batch(step, run.gen, cfg), lr, ema_decay_at(step, cfg), cfg.grad_clip)
    return loss, lr


def train_loop(run: TrainingRun, data: TrainingData) -> LoopEnd:
    """Train from ``run.step`` to the run's end, a caught signal, or the time limit.

    The end is ``run.planned_end`` where the --max-minutes budget fixed it (``nets.training.budget``,
    recorded in the checkpoint; a resumed session goes there whatever its clock says), else
    ``data.total_steps`` (--max-steps or --epochs); the learning-rate schedule decays to 0 there.
    """
    cfg, world = run.cfg, run.world
    # a resumed run whose budget planned its end goes to that end: its own clock does not cut it
    time_limit = 60 * cfg.max_minutes if cfg.max_minutes and run.planned_end is None else None
    end = run.planned_end or data.total_steps
    plan = None
    if time_limit is not None and run.planned_end is None:
        plan = ClockPlan(time_limit, run.step, data.total_steps)
    progress = Progress("step" if world.is_main else None, end, run.step, unit_scale=data.global_batch,
                        time_limit=time_limit)
    log, order = LossLog(run, data), DataOrder(data, cfg.seed, world.shard(data.global_batch))
    t_start, learner = time.perf_counter(), run.learner
    try:
        with caught_signals() as signals:
            while run.step < end:
                loss, lr = take_step(run, learner, order, end)
                log.add(run.step, loss, lr)
                run.step += 1
                elapsed = time.perf_counter() - t_start
                if plan is not None:
                    end = replan(run, plan, elapsed, end, progress)
                if run.preview is not None:
                    run.preview.maybe_write(run.step, elapsed)
                signum = signals.caught  # read once: a signal landing after this waits one more step
                timed_out = time_limit is not None and elapsed > time_limit
                stop = stop_vote(run, end, signum, timed_out)
                save_now = run.step % cfg.checkpoint_every == 0 or run.step == end or bool(stop)
                if save_now or run.step % cfg.log_every == 0:
                    rows = log.flush(run, data)
                    check_losses_finite(rows, run.run_dir)
                    log_rows(run, rows)
                    progress.update(run.step, f"loss {rows[-1]['loss']:.4f}")
                    if save_now:
                        save(run)
                if stop:
                    return LoopEnd(run.step, stop.signal, time.perf_counter() - t_start)
    finally:
        progress.close()
    return LoopEnd(run.step, None, time.perf_counter() - t_start)


def replan(run: TrainingRun, plan: ClockPlan, elapsed: float, end: int, progress: Progress) -> int:
    """The run's end after this step: where a plan is due, the ranks' agreed projection of the
    step the --max-minutes budget reaches (recorded as ``run.planned_end``), else ``end``."""
    plan.observe(run.step, elapsed)
    if not plan.due(run.step):
        return end
    agreed = run.world.agree_on_end(plan.projection(run.step, elapsed))
    if not plan.accept(run.step, elapsed, agreed):
        return end
    run.planned_end = progress.total = plan.end
    if run.world.is_main:
        rate = (plan.end - run.step) / max(plan.time_limit - elapsed, 1e-9)
        print(f"time budget: the {format_duration(plan.time_limit)} budget reaches step {plan.end} at "
              f"{rate:.1f} steps/s; the learning rate decays to 0 there", file=sys.stderr, flush=True)
    return plan.end
