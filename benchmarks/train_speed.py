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
from pathlib import Path

import numpy as np
import torch

from benchmarks import measure, workload
from benchmarks.naive import NaiveTrainStep
from nets import cli
from nets.diffusion import Diffusion
from nets.training.config import TrainConfig
from nets.training.distributed import World
from nets.training.loop import DataOrder, take_step
from nets.training.run import build_run, training_data, wrap_for_training
from nets.training.step import Batch

DEFAULTS = {"batch_sizes": [64, 128], "precision": ["fp32", "auto"], "repeats": 5, "warmup": 2, "steps": 3}
INPUT_BATCHES_PER_STEP = 20  # input-pipeline timings run this many batches per timed step
QUICK = {"batch_sizes": [64], "precision": ["auto"], "repeats": 3, "warmup": 1, "steps": 1}


class ProjectTrainStep:
    """One step of the trainer's loop, by the trainer's own functions (unconditional, one process):
    the run is built by ``nets.training.run.build_run`` and ``training_data`` (the split as one
    device tensor), wrapped by ``wrap_for_training`` (torch.compile when asked), and each call is
    ``nets.training.loop.take_step`` (the epoch's data order, t and ε drawn on the device, the
    loss under autocast, AdamW, clipping, the foreach EMA), whose loss is stored on the device,
    not read (the loop reads it every ``log_every`` steps). ``memory_format`` overrides the
    trainer's choice (``nets.device.memory_format_for``) so that both formats can be timed."""

    def __init__(self, cfg: TrainConfig, images: np.ndarray, device: torch.device,
                 autocast_dtype: torch.dtype | None, memory_format: torch.memory_format):
        world = World(device=device)
        run = build_run(cfg, world, Path("."), autocast_dtype)  # writes nothing: no loop, no checkpoint
        for module in (run.model, run.ema):
            module.to(memory_format=memory_format)
        run.memory_format = memory_format
        self.data = training_data(images, None, cfg, world, memory_format)  # unlabelled: unconditional
        wrap_for_training(run)
        self.run, self.learner = run, run.learner
        self.order = DataOrder(self.data, cfg.seed, world.shard(self.data.global_batch))
        self.loss_buf = torch.zeros(cfg.log_every, device=device)

    def batch(self) -> Batch:
        """The input of one step: x0 indexed on the device, t and ε drawn there."""
        return self.order.batch(self.run.step, self.run.gen, self.run.cfg)

    def __call__(self) -> None:
        loss, _ = take_step(self.run, self.learner, self.order, self.data.total_steps)
        self.loss_buf[self.run.step % self.run.cfg.log_every] = loss
        self.run.step += 1


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
            cfg = TrainConfig(batch_size=batch, timesteps=args.timesteps, seed=args.seed, conditional=False,
                              unet=base.config.to_dict(), compile=compiled, max_steps=10**6)
            memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            step = ProjectTrainStep(cfg, images, device, workload.autocast_dtype(prec, device), memory_format)
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
