"""Training throughput: ``python benchmarks/train_speed.py`` (or ``python -m benchmarks.train_speed``).

Steady-state images/s of one optimizer step of the U-Net (warm-up excluded; median and spread
of several repeats), for each batch size and precision, interleaving in one run:

  naive                 the tutorial pipeline (benchmarks/naive.py), fp32, contiguous
  project P             nets.training.step's step: the split as one device tensor, t and ε drawn on
                        the device, Diffusion.loss, AdamW, clipping, foreach EMA; network under
                        autocast in precision P (fp32, bf16)
  project P cl          the same with the model and data in channels_last memory format
  project P compile     the same with torch.compile(model) (with --compile; build time reported)
  naive/project input   only the input of a step (x0, t, ε on the device), in rounds of their own

Each row also gives model FLOPs per image (forward + backward, FlopCounterMode), the achieved
FLOP/s, its fraction of the matmul peak measured in the same run, and its speed over naive.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as `python benchmarks/<script>.py`
    import os
    import sys
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, as with `python -m`
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: benchmarks/__init__.py

import copy
import os
import sys
import time

import numpy as np
import torch

from benchmarks import measure, workload
from benchmarks.naive import NaiveTrainStep
from nets import cli
from nets.diffusion import Diffusion
from nets.pixels import to_training_tensor
from nets.training.config import TrainConfig, ema_decay_at, lr_at, total_steps
from nets.training.step import Batch, Learner, draw_batch, epoch_permutation, train_step

DEFAULTS = {"batch_sizes": [64, 128], "precision": ["fp32", "auto"], "repeats": 5, "warmup": 2, "steps": 3}
INPUT_BATCHES_PER_STEP = 20  # input-pipeline timings run this many batches per timed step
QUICK = {"batch_sizes": [64], "precision": ["auto"], "repeats": 3, "warmup": 1, "steps": 1}


class ProjectTrainStep:
    """One step of the trainer's loop (nets/training/loop.py; unconditional, one process), through
    its own functions.

    ``nets.training.step.draw_batch`` indexes the split (one device tensor) with the epoch's permutation
    and draws t and ε on the device; ``nets.training.step.train_step`` runs the loss under autocast,
    AdamW (fused on CUDA), clipping and the foreach EMA, and returns the loss as a device tensor
    that is stored, not read (train.py reads it back every ``log_every`` steps).
    """

    def __init__(self, model: torch.nn.Module, images: np.ndarray, batch_size: int,
                 diffusion: Diffusion, device: torch.device, autocast_dtype: torch.dtype | None,
                 channels_last: bool = False, compile: bool = False, seed: int = 0):
        self.cfg = TrainConfig(batch_size=batch_size, timesteps=diffusion.num_timesteps, seed=seed,
                               conditional=model.config.num_classes > 0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=fmt)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.data = to_training_tensor(images, device).contiguous(memory_format=fmt)
        self.targets = torch.zeros(len(self.data), dtype=torch.int64, device=device)  # unused: unconditional
        self.diffusion, self.device, self.autocast_dtype = diffusion.to(device), device, autocast_dtype
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr,
                                           weight_decay=self.cfg.weight_decay,
                                           fused=device.type == "cuda")
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.forward = torch.compile(self.model) if compile else self.model
        self.learner = Learner(self.forward, self.model, self.ema, self.optimizer, self.diffusion,
                               autocast_dtype)
        self.loss_buf = torch.zeros(self.cfg.log_every, device=device)
        self.steps_per_epoch = len(self.data) // batch_size
        self.step, self.perm = 0, None

    def batch(self) -> Batch:
        """The input of one step: x0 (B, 1, 28, 28) indexed on the device, t (B,) and ε drawn there."""
        cfg = self.cfg
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        if self.perm is None or pos == 0:
            self.perm = epoch_permutation(cfg.seed, epoch, len(self.data), self.device)
        idx = self.perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        return draw_batch(self.data, self.targets, idx, slice(None), self.gen, cfg)

    def __call__(self) -> None:
        lr = lr_at(self.step, self.cfg, total_steps(self.cfg, self.steps_per_epoch))
        decay = ema_decay_at(self.step, self.cfg)
        loss = train_step(self.learner, self.batch(), lr, decay, self.cfg.grad_clip)
        self.loss_buf[self.step % self.cfg.log_every] = loss
        self.step += 1


def flops_per_image(model: torch.nn.Module, diffusion: Diffusion, device: torch.device,
                    timesteps: int, batch: int = 2) -> int:
    """Forward + backward FLOPs of the loss per image (counted on a copy, at a small batch)."""
    model = copy.deepcopy(model).to(device)
    x0 = torch.randn(batch, 1, 28, 28, device=device)
    t = torch.randint(0, timesteps, (batch,), device=device)
    return measure.count_flops(
        lambda: diffusion.loss(model, x0, t, torch.randn_like(x0)).backward()) // batch


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    workload.add_common_args(p, DEFAULTS, QUICK)
    workload.add_script_arg(p, "--steps", DEFAULTS, QUICK, "optimizer steps per timed repeat",
                            type=cli.positive_int)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(model) (slow to build on CPU; build time reported)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="skip the channels_last variant")
    p.add_argument("--data-dir", help="MNIST folder (never downloaded); default: $DDPM_DATA_DIR "
                   "or ~/.cache/ddpm/mnist; random uint8 images when absent")
    p.add_argument("--split", choices=["train", "test"], default="train", help="MNIST split")
    return p


def main(argv: list[str] | None = None) -> int:
    args = workload.resolve(build_parser().parse_args(argv), DEFAULTS, QUICK)
    device, config = args.device, workload.unet_config(args)
    images, data_note = workload.training_images(args.data_dir, args.split, args.seed)
    if max(args.batch_sizes) > len(images):
        cli.fail(f"--batch-sizes: {max(args.batch_sizes)} exceeds the {len(images)} images")
    diffusion = Diffusion(workload.schedule(args.timesteps)).to(device)
    base = workload.build_unet(config, args.seed)
    peak_args = (device, args.precision, 2 * args.repeats, args.clock)
    peaks = [measure.matmul_peaks(*peak_args)]
    flops = flops_per_image(base, diffusion, device, args.timesteps)
    machine = measure.machine(device)
    print(f"machine: {machine}\ndata: {data_note}\nmodel: "
          f"{sum(p.numel() for p in base.parameters()):,} parameters, {flops / 1e6:.1f} MFLOP per "
          f"image per training step (forward + backward)\npeak: "
          f"{measure.describe_peaks(peaks[0])}", file=sys.stderr)

    rows, compile_seconds = [], {}
    for batch in args.batch_sizes:
        rows += time_batch(args, base, images, diffusion, batch, flops, compile_seconds)
    peaks = measure.best_peaks([*peaks, measure.matmul_peaks(*peak_args)])
    measure.set_fraction_of_peak(rows, peaks)
    _report(rows, args, machine, peaks, flops, data_note, compile_seconds)
    return 0


def time_batch(args, base, images, diffusion, batch, flops, compile_seconds) -> list[dict]:
    """Rows for one batch size: every variant, interleaved; "input" rows time only the input
    pipeline (x0, t, ε on the device) of the naive and the project step."""
    device = args.device
    naive = NaiveTrainStep(copy.deepcopy(base), images, batch, diffusion.schedule, device, seed=args.seed)
    variants, meta = {"naive": naive}, {"naive": ("fp32", "contiguous", False)}
    for prec in args.precision:
        options = [("contiguous", False)]
        options += [("channels_last", False)] if args.channels_last else []
        options += [("contiguous", True)] if args.compile else []
        for fmt, compiled in options:
            name = f"project {prec}" + (" cl" if fmt == "channels_last" else "") + \
                (" compile" if compiled else "")
            step = ProjectTrainStep(copy.deepcopy(base), images, batch, diffusion, device,
                                    workload.autocast_dtype(prec, device), fmt == "channels_last",
                                    compiled, args.seed)
            if compiled:  # the first call builds the graph: timed once, outside the rounds
                key, start = f"{name} b{batch}", time.perf_counter()
                try:
                    step()
                except Exception as err:  # noqa: BLE001 - a failed build skips the variant
                    print(f"{name}: torch.compile failed ({type(err).__name__}: {err}); skipped",
                          file=sys.stderr)
                    compile_seconds[key] = None
                    continue
                measure.synchronize(device)
                compile_seconds[key] = time.perf_counter() - start
                print(f"{name}: built in {compile_seconds[key]:.1f}s", file=sys.stderr)
            variants[name], meta[name] = step, (prec, fmt, compiled)
    timings = measure.interleave({n: _repeat(v, args.steps) for n, v in variants.items()},
                                 args.repeats, args.warmup, device, units=args.steps, clock=args.clock)
    # The input pipelines alone take milliseconds: timed in rounds of their own, many per call.
    project = variants[f"project {args.precision[0]}"]
    inputs = {"naive input": naive.batch, "project input": project.batch}
    meta.update({"naive input": meta["naive"], "project input": meta[f"project {args.precision[0]}"]})
    n = INPUT_BATCHES_PER_STEP * args.steps
    timings.update(measure.interleave({k: _repeat(v, n) for k, v in inputs.items()},
                                      args.repeats, args.warmup, device, units=n, clock=args.clock))
    rows = []
    for name, timing in timings.items():
        (prec, fmt, compiled), ips = meta[name], batch / timing.median
        row = {"batch": batch, "variant": name, "precision": prec, "memory_format": fmt,
               "compiled": compiled, "seconds_per_step": timing.to_dict(), "s_step": timing.median,
               "spread": timing.spread, "images_per_s": ips, "flops_per_image": flops,
               "gflops_per_s": flops * ips / 1e9,
               "speedup_vs_naive": measure.paired_ratio(timings["naive"], timing),
               "speedup_vs_contiguous": None}
        if fmt == "channels_last":
            row["speedup_vs_contiguous"] = measure.paired_ratio(timings[f"project {prec}"], timing)
        if name.endswith("input"):  # no training: no FLOPs; compared with the naive input
            row.update(flops_per_image=None, gflops_per_s=None,
                       speedup_vs_naive=measure.paired_ratio(timings["naive input"], timing))
        rows.append(row)
    return rows


def _repeat(fn, n: int):
    def run() -> None:
        for _ in range(n):
            fn()
    return run


def _report(rows, args, machine, peaks, flops, data_note, compile_seconds) -> None:
    columns = [("batch", "batch", "d"), ("variant", "variant", "s"), ("s_step", "s/step", ".4f"),
               ("spread", "spread", ".0%"), ("images_per_s", "img/s", ".1f"),
               ("gflops_per_s", "GFLOP/s", ".1f"), ("fraction_of_peak", "of peak", ".0%"),
               ("speedup_vs_naive", "x naive", ".2f"), ("speedup_vs_contiguous", "x contig", ".2f")]
    print(measure.format_table(rows, columns))
    print(f"({args.repeats} repeats of {args.steps} steps after {args.warmup} warm-up; "
          f"peaks: {measure.describe_peaks(peaks)}; "
          f"{flops / 1e6:.1f} MFLOP/image; data: {data_note})")
    default = measure.report_default_speedups(
        rows, args.default_precision, lambda r: str(r["batch"]),
        "python -m nets.train's step as it runs here by default", "at batch")
    if args.json:
        best = {}
        for row in rows:
            if row["variant"].startswith("project") and not row["variant"].endswith("input"):
                key = str(row["batch"])
                best[key] = max(best.get(key, 0.0), row["speedup_vs_naive"])
        measure.write_json(args.json, {
            "benchmark": "train_speed", "machine": machine,
            "load_average_end": [round(v, 2) for v in os.getloadavg()], "data": data_note,
            "settings": workload.settings(args, "steps", "compile", "channels_last", "split"),
            "peaks": peaks, "flops_per_image": flops, "compile_seconds": compile_seconds,
            "best_speedup_vs_naive": best, "default_speedup_vs_naive": default,
            "results": [{k: v for k, v in r.items() if k not in ("s_step", "spread")} for r in rows]})


if __name__ == "__main__":
    raise SystemExit(main())
