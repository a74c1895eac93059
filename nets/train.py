"""Train a DDPM on MNIST: ``python -m nets.train``.

Reads top to bottom: config → data → model → optimizer → loop → checkpoint → figures.
Every run directory ends up holding ``checkpoint.pt`` (raw and EMA weights, optimizer, RNG
states, the resolved config), ``metrics.jsonl`` (one row per step), ``config.json`` and the
seed report's three figures: ``loss.png``, ``samples.png`` and ``reverse.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import diffusion_core as core
from nets import cli, distributed
from nets.checkpoint import CheckpointError, atomic_write, load_checkpoint, load_weights, save_checkpoint
from nets.diffusion import Diffusion
from nets.unet import UNet, UNetConfig

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number


@dataclass
class TrainConfig:
    """Everything that defines a run; printed at start and saved in every checkpoint."""

    data_dir: str | None = None
    split: str = "train"
    limit: int | None = None
    epochs: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: str = "linear"
    timesteps: int = 1000
    objective: str = "eps"
    conditional: bool = False
    label_dropout: float = 0.1
    unet: dict = field(default_factory=lambda: UNetConfig().to_dict())
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"
    run_dir: str = ""
    checkpoint_every: int = 500
    log_every: int = 25
    num_samples: int = 64
    sample_steps: int | None = None
    figures: bool = True
    dist_timeout: float = 300.0
    world_size: int = 1  # processes that trained it (torchrun's WORLD_SIZE), not a flag


# Flags that may change when a run is resumed (to extend it or move it); all others are fixed.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "device", "compile", "precision",
                       "checkpoint_every", "log_every", "figures", "num_samples", "sample_steps",
                       "dist_timeout")


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.train", description=__doc__.splitlines()[0])
    d = TrainConfig()
    p.add_argument("--data-dir", type=cli.directory,
                   help="folder with the MNIST IDX files (downloaded there if missing); default: "
                   "$DDPM_DATA_DIR or ~/.cache/ddpm/mnist")
    p.add_argument("--split", choices=["train", "test"], default=d.split,
                   help="which MNIST split to train on")
    p.add_argument("--limit", type=cli.positive_int, help="use only the first N images")
    p.add_argument("--epochs", type=cli.positive_int, default=d.epochs, help="passes over the data")
    p.add_argument("--max-steps", type=cli.positive_int,
                   help="train exactly this many optimizer steps (instead of --epochs)")
    p.add_argument("--max-minutes", type=cli.positive_float,
                   help="stop training after this much wall time (figures are made after)")
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size,
                   help="images per step and process (under torchrun the global batch is this "
                   "times the number of processes)")
    p.add_argument("--lr", type=cli.float_in(0, 1e30), default=d.lr,  # above, AdamW's step overflows
                   help="AdamW peak learning rate")
    p.add_argument("--warmup-steps", type=cli.int_at_least(0), default=d.warmup_steps,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--weight-decay", type=cli.float_in(0, 1, low_open=False),
                   default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=cli.positive_float, default=d.grad_clip,
                   help="clip the gradient's global norm to this")
    p.add_argument("--ema-decay", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=d.ema_decay, help="EMA decay (warmed up as min(decay, (1+n)/(10+n)))")
    p.add_argument("--schedule", choices=["linear", "cosine", "sigmoid"], default=d.schedule,
                   help="beta schedule")
    p.add_argument("--timesteps", type=cli.positive_int, default=d.timesteps,
                   help="diffusion steps T")
    p.add_argument("--objective", choices=["eps", "x0", "v"], default=d.objective,
                   help="what the network predicts")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional model for classifier-free guidance")
    p.add_argument("--label-dropout", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=d.label_dropout, help="with --conditional: probability a label is dropped")
    u = UNetConfig()
    p.add_argument("--base-channels", type=cli.positive_int, default=u.base_channels,
                   help="U-Net width at full resolution")
    p.add_argument("--channel-mults", default=",".join(map(str, u.channel_mults)),
                   help="comma-separated width multipliers, one per resolution")
    p.add_argument("--num-res-blocks", type=cli.positive_int, default=u.num_res_blocks,
                   help="residual blocks per resolution")
    p.add_argument("--dropout", type=cli.float_in(0, 1, low_open=False, high_open=True),
                   default=u.dropout, help="dropout inside residual blocks")
    p.add_argument("--seed", type=cli.int_at_least(0, 2**32 - 1), default=d.seed,
                   help="seed of every random draw")
    p.add_argument("--device", default=d.device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--precision", choices=cli.PRECISIONS, default=d.precision,
                   help="the network's arithmetic: bf16 autocast or fp32; auto = bf16 where the "
                   "device has it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32. Weights, "
                   "optimizer and loss stay fp32")
    p.add_argument("--dist-timeout", type=cli.positive_float, default=d.dist_timeout,
                   help="under torchrun: seconds a process waits for the others before the job fails")
    p.add_argument("--run-dir", help="output folder (default runs/<timestamp>)")
    p.add_argument("--resume", type=cli.existing_path, help="continue the run in this directory")
    p.add_argument("--checkpoint-every", type=cli.positive_int, default=d.checkpoint_every,
                   help="write a checkpoint every N steps (and always at the end)")
    p.add_argument("--log-every", type=cli.positive_int, default=d.log_every,
                   help="fetch losses from the device and log them every N steps")
    p.add_argument("--num-samples", type=cli.positive_int, default=d.num_samples,
                   help="digits in samples.png")
    p.add_argument("--sample-steps", type=cli.positive_int,
                   help="DDPM steps for the figures (default: all T; fewer = respaced DDPM)")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip sampling and the figures at the end")
    return p


def config_from_args(argv: list[str] | None) -> tuple[TrainConfig, Path | None]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mults = tuple(int(m) for m in args.channel_mults.split(","))
        unet = UNetConfig(base_channels=args.base_channels, channel_mults=mults,
                          num_res_blocks=args.num_res_blocks, dropout=args.dropout,
                          num_classes=10 if args.conditional else 0)
    except ValueError as err:
        parser.error(f"argument --channel-mults/--base-channels: {err}")
    if args.sample_steps and args.sample_steps > args.timesteps:
        parser.error(f"argument --sample-steps: {args.sample_steps} exceeds --timesteps "
                     f"{args.timesteps}")
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["unet"] = unet.to_dict()
    values["data_dir"] = str(args.data_dir) if args.data_dir else None
    values["run_dir"] = args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = TrainConfig(**values)
    if args.resume is None:
        return cfg, None
    # Resume: the saved config wins, except the flags that may extend or move a run.
    if args.resume.is_file() and args.resume.name != "checkpoint.pt":
        parser.error(f"argument --resume: expected a run directory or its checkpoint.pt, got "
                     f"{args.resume}")
    run_dir = args.resume if args.resume.is_dir() else args.resume.parent
    try:
        saved = load_checkpoint(run_dir)
    except CheckpointError as err:
        cli.fail(f"--resume: {err}")
    try:
        resumed = TrainConfig(**{**saved["config"], "run_dir": str(run_dir)})
        UNetConfig.from_dict(resumed.unet)
        check_saved_values(parser, resumed)
    except (TypeError, ValueError, AttributeError) as err:
        cli.fail(f"--resume: the config saved in {run_dir} is not a training config: {err}")
    defaults = parser.parse_args([])
    for name in RESUMABLE_OVERRIDES:
        if getattr(args, name) != getattr(defaults, name):
            setattr(resumed, name, getattr(args, name))
    return resumed, run_dir


def check_saved_values(parser: cli.Parser, cfg: TrainConfig) -> None:
    """Check a resumed config with the flags' own parsers: a checkpoint may come from a stranger."""
    for action in parser._actions:
        value = getattr(cfg, action.dest, None)
        if value is None or action.dest == "run_dir" or not action.option_strings:
            continue
        try:
            if action.nargs == 0 and not isinstance(value, bool):  # --conditional, --no-figures
                raise ValueError("expected true or false")
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"expected one of {', '.join(action.choices)}")
            if action.type is not None:
                action.type(str(value))
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{action.option_strings[0]} = {value!r}: {err}") from None
    if cfg.sample_steps is not None and cfg.sample_steps > cfg.timesteps:
        raise ValueError(f"--sample-steps {cfg.sample_steps} exceeds --timesteps {cfg.timesteps}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak, then constant (the EMA does the averaging)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """EMA warm-up so that the random initial weights do not dominate short runs."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def memory_format_for(device: torch.device, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """channels_last where it was measured to help: fp32 on CPU (+3-15 % per step in
    docs/benchmarks.md); bf16 on CPU is 25 % slower with it, and CUDA is unmeasured."""
    return torch.channels_last if device.type == "cpu" and amp_dtype is None else torch.contiguous_format


class Batch(NamedTuple):
    """One step's input: clean images, timesteps, noise and (conditional runs) labels."""

    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor | None


def draw_batch(data: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor, rows: slice,
               gen: torch.Generator, cfg: TrainConfig) -> Batch:
    """The input of one step, all drawn on the device (no host work, no sync).

    ``idx`` holds the global batch's image indices. Every rank draws t, ε and the label dropout
    for the whole global batch and keeps its ``rows``: the ranks together train on exactly the
    batch that one process would.
    """
    global_batch, device = len(idx), data.device
    idx = idx[rows]
    x0 = data[idx]  # (B, 1, 28, 28), B = cfg.batch_size
    t = torch.randint(0, cfg.timesteps, (global_batch,), generator=gen, device=device)[rows]
    noise = torch.randn((global_batch, *x0.shape[1:]), generator=gen, device=device)[rows]
    y = None
    if cfg.conditional:  # classifier-free guidance: drop labels to "no label" (class 10)
        drop = torch.rand(global_batch, generator=gen, device=device)[rows] < cfg.label_dropout
        y = torch.where(drop, torch.full_like(targets[idx], 10), targets[idx])
    return Batch(x0, t, noise, y)


def train_step(forward: Callable, model: torch.nn.Module, ema: torch.nn.Module,
               optimizer: torch.optim.Optimizer, diffusion: Diffusion, batch: Batch, step: int,
               cfg: TrainConfig, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One optimizer step: loss (network under autocast), AdamW with warm-up and clipping, EMA.

    ``forward`` is ``model`` or a wrapper of it (DDP, torch.compile). Returns the loss as a
    device tensor: reading it is the caller's choice, so the step itself never syncs.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    with torch.autocast(batch.x0.device.type, dtype=amp_dtype or torch.bfloat16,
                        enabled=amp_dtype is not None):
        loss = diffusion.loss(forward, batch.x0, batch.t, batch.noise, batch.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()),
                             1.0 - ema_decay_at(step, cfg))
    return loss.detach()


class Progress:
    """A one-line progress bar on stderr: step, loss, images/s and ETA."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start_step, self.t0 = total, start, time.perf_counter()
        self.enabled = enabled  # False on every rank but 0
        self.tty = enabled and sys.stderr.isatty()

    def update(self, step: int, loss: float, batch: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start_step) / max(elapsed, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        line = (f"step {step}/{self.total} [{100 * step / self.total:5.1f}%] loss {loss:.4f} "
                f"{rate * batch:7.1f} img/s ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # ---- config -------------------------------------------------------------------------------
    cfg, resume_dir = config_from_args(argv)
    if resume_dir is None and (Path(cfg.run_dir) / "checkpoint.pt").exists():  # never clobber a run
        cli.fail(f"--run-dir: {cfg.run_dir} already holds a run's checkpoint.pt; continue it with "
                 f"--resume {cfg.run_dir} or choose another --run-dir")
    device = cli.pick_device(cfg.device)
    world = distributed.setup(device, cfg.dist_timeout)  # one process unless torchrun started several
    device = world.device  # under torchrun on CUDA: cuda:LOCAL_RANK
    if resume_dir is not None and cfg.world_size != world.size:  # keep the run's global batch
        try:
            cfg.batch_size = distributed.per_rank_batch(cfg.batch_size, cfg.world_size, world.size)
        except ValueError as err:
            cli.fail(f"--resume: {err}")
    cfg.world_size = world.size
    run_dir = Path(cfg.run_dir)
    if world.is_main:  # rank 0 alone prints the config and writes files
        run_dir = cli.ensure_writable_dir(run_dir, "--run-dir")
        print(json.dumps(asdict(cfg), indent=1))
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data: the whole split as one tensor on the device -------------------------------------
    from nets import data as mnist
    try:
        with world.local_main_first():  # one download per machine
            arrays = mnist.load_mnist(cfg.data_dir or mnist.default_data_dir(), cfg.split)
    except (mnist.MnistUnavailableError, mnist.MnistFormatError) as err:
        cli.fail(str(err))
    images, labels = arrays.images, arrays.labels
    if cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    n = len(images)
    global_batch = cfg.batch_size * world.size  # per step; each rank trains on cfg.batch_size of it
    if global_batch > n:
        cli.fail(f"--batch-size {cfg.batch_size}" + (f" × {world.size} processes" if world.size > 1 else "")
                 + f" exceeds the {n} training images")
    data = mnist.to_training_tensor(images, device)  # (N, 1, 28, 28) in [-1, 1]
    targets = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    steps_per_epoch = n // global_batch
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    if world.is_main:
        print(f"data: {n} images ({cfg.split}), {steps_per_epoch} steps/epoch, {total_steps} steps, "
              f"device {device}", file=sys.stderr)
        print(f"batch: {global_batch} images per step = {cfg.batch_size} per process × {world.size} "
              f"process{'es' if world.size > 1 else ''}; peak lr {cfg.lr:g}, never scaled with the batch",
              file=sys.stderr)

    # ---- model, diffusion, optimizer -----------------------------------------------------------
    schedule = core.DiffusionSchedule.from_betas(core.make_betas(cfg.schedule, cfg.timesteps))
    diffusion = Diffusion(schedule, cfg.objective).to(device)
    amp_dtype = cli.autocast_dtype(cfg.precision, device)
    fmt = memory_format_for(device, amp_dtype)
    model = UNet(UNetConfig.from_dict(cfg.unet)).to(device, memory_format=fmt)
    ema = UNet(UNetConfig.from_dict(cfg.unet)).to(device, memory_format=fmt)
    ema.load_state_dict(model.state_dict())
    data = data.contiguous(memory_format=fmt)
    ema.requires_grad_(False)
    if world.is_main:
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", file=sys.stderr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # t, ε and label dropout, same on all ranks
    step = 0
    if resume_dir is not None:
        try:
            state = load_checkpoint(resume_dir, map_location=device)
            load_weights(model, state["model"], f"model weights in {resume_dir}")
            load_weights(ema, state["ema"], f"EMA weights in {resume_dir}")
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["rng"]["generator"].cpu())
            torch.set_rng_state(state["rng"]["torch"].cpu())
            step = int(state["step"])
        except CheckpointError as err:
            cli.fail(f"--resume: {err}")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            cli.fail(f"--resume: {resume_dir} is not a complete training checkpoint: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        if world.is_main:
            print(f"resumed from step {step}", file=sys.stderr)
    if world.size > 1:  # dropout masks: each rank its own stream, or all ranks would share them
        torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank, step))
    forward = world.wrap(model)  # DistributedDataParallel under torchrun
    forward = torch.compile(forward) if cfg.compile else forward
    if world.is_main:
        print(f"precision: {cli.describe_precision(amp_dtype)} (--precision {cfg.precision} on "
              f"{device.type}), {'channels_last' if fmt == torch.channels_last else 'contiguous'} "
              f"activations", file=sys.stderr)

    def checkpoint_state() -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "config": asdict(cfg),
                "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()}}

    # ---- the loop ------------------------------------------------------------------------------
    metrics_path = run_dir / "metrics.jsonl"
    if world.is_main:
        write_metrics(metrics_path, read_metrics(metrics_path, upto=step))  # drop rows after the checkpoint
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT_CODES}
    # Losses since the last flush; slot i holds step logged_to + i, so a run resumed at any step
    # (not only a multiple of --log-every) logs and checks the right values.
    loss_buf = torch.zeros(max(1, min(cfg.log_every, total_steps)), device=device)
    progress, t_start, logged_to = Progress(total_steps, step, world.is_main), time.perf_counter(), step
    perm = None
    rows = world.shard(global_batch)  # this rank's rows of every global batch
    try:
        while step < total_steps:
            epoch, pos = divmod(step, steps_per_epoch)
            if perm is None or pos == 0:
                perm = epoch_permutation(cfg.seed, epoch, n, device)
            batch = draw_batch(data, targets, perm[pos * global_batch:(pos + 1) * global_batch],
                               rows, gen, cfg)
            loss = train_step(forward, model, ema, optimizer, diffusion, batch, step, cfg, amp_dtype)
            loss_buf[step - logged_to] = loss
            step += 1
            signum = stop["signal"]  # read once: a signal landing after this waits one more step
            timed_out = cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes
            if world.size > 1:  # ranks must stop at one step: they agree at the steps where all log
                at_log = step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == total_steps
                signum, timed_out = world.agree_to_stop(signum, timed_out) if at_log else (None, False)
            save_now = step % cfg.checkpoint_every == 0 or step == total_steps or signum or timed_out
            if save_now or step % cfg.log_every == 0:
                losses = world.mean(loss_buf[: step - logged_to]).tolist()  # the only host sync
                new = [{"step": s + 1, "epoch": s // steps_per_epoch, "loss": v,
                        "lr": lr_at(s, cfg)} for s, v in zip(range(logged_to, step), losses, strict=True)]
                bad = [r for r in new if not math.isfinite(r["loss"])]
                if bad:
                    progress.close()
                    if not world.is_main:
                        raise SystemExit(1)  # every rank saw the same losses; rank 0 says why
                    cli.fail(f"non-finite loss {bad[0]['loss']} at step {bad[0]['step']}; the last "
                             f"good checkpoint in {run_dir} is kept", code=1)
                if world.is_main:
                    with metrics_path.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in new)
                logged_to = step
                progress.update(step, losses[-1], global_batch)
                if save_now:  # every rank: a checkpoint holds the weights that all ranks hold
                    world.check_replicas_agree({"model": model, "ema": ema})
                if save_now and world.is_main:  # only ever after every loss since the last save was checked
                    try:
                        save_checkpoint(checkpoint_state(), run_dir / "checkpoint.pt")
                    except (CheckpointError, OSError, RuntimeError) as err:  # NaN weights, full disk
                        progress.close()  # (torch's zip writer may turn a failed write into RuntimeError)
                        cli.fail(f"step {step}: cannot save a checkpoint: {str(err).splitlines()[0]}; "
                                 f"the last good checkpoint in {run_dir} is kept", code=1)
            if signum:
                progress.close()
                world.leave()  # no rank exits (and so gets the job stopped) before rank 0 has saved
                if world.is_main:
                    print(f"interrupted at step {step}: checkpoint saved; continue with "
                          f"--resume {run_dir}", file=sys.stderr)
                return SIGNAL_EXIT_CODES[signum]
            if timed_out:
                break
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
    progress.close()
    world.leave()  # the ranks are done with each other; rank 0 alone makes the figures
    train_seconds = time.perf_counter() - t_start
    if world.is_main:
        print(f"trained to step {step} in {train_seconds:.1f}s", file=sys.stderr)

    # ---- figures -------------------------------------------------------------------------------
    if cfg.figures and world.is_main:
        make_figures(cfg, run_dir, ema, diffusion, device, amp_dtype)
    return 0


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    """The rows of metrics.jsonl (up to step ``upto``); a last line cut short by a kill is dropped."""
    if not path.exists():
        return []
    *lines, _torn = path.read_text().split("\n")  # _torn: "" unless an append was cut short
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Replace metrics.jsonl atomically (temp file, fsync, rename): a kill mid-way loses no rows."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def make_figures(cfg: TrainConfig, run_dir: Path, ema: UNet, diffusion: Diffusion,
                 device: torch.device, amp_dtype: torch.dtype | None = None) -> None:
    """F1 loss.png, F2 samples.png (EMA weights) and F3 reverse.png in the run directory."""
    from nets import figures
    from nets.data import images_to_uint8
    from nets.sampling import DeviceCoefficients, make_coefficients, sample

    rows = read_metrics(run_dir / "metrics.jsonl")
    if rows:
        figures.plot_loss(np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows]),
                          np.array([r["epoch"] for r in rows]), run_dir / "loss.png")
    coeffs = DeviceCoefficients(make_coefficients(diffusion.schedule, "ddpm",
                                                  cfg.sample_steps)).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    shape = (cfg.num_samples, 1, 28, 28)
    x_T = torch.randn(shape, generator=gen, device=device)
    y = None
    if cfg.conditional:  # one row per digit, guidance w = 1 (plain conditional)
        y = torch.arange(cfg.num_samples, device=device) % 10
    ema.eval()
    t0 = time.perf_counter()
    result = sample(ema, diffusion, coeffs, x_T,
                    lambda k, like: torch.randn(like.shape, generator=gen, device=device),
                    y=y, num_snapshots=10, autocast_dtype=amp_dtype)
    print(f"sampled {cfg.num_samples} digits ({coeffs.num_steps} DDPM steps) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    figures.save_grid(images_to_uint8(result.images), run_dir / "samples.png")
    chains = min(8, cfg.num_samples)
    snaps = np.stack([images_to_uint8(s[:chains]) for s in result.snapshots])  # (S, N, 28, 28)
    figures.plot_reverse(snaps, result.snapshot_timesteps, run_dir / "reverse.png")
    print(f"figures written to {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
