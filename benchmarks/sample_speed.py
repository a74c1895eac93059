"""Sampling throughput: ``python benchmarks/sample_speed.py`` (or ``python -m benchmarks.sample_speed``).

Images/s of the reverse chain (DDPM-1000 and DDIM-50 by default; any ``--steps``; the few-step
solvers dpmpp-2m, dpmpp-3m, sde-dpmpp-2m at 10 steps unless ``--steps``) for each batch size and
precision, interleaving in one run:

  naive              the tutorial loop (benchmarks/naive.py): host tables every step, NumPy →
                     torch scalars, an ``.item()`` sync per step; fp32. For a DPM-Solver++
                     solver, the tutorial DDIM loop at the same K (what it replaces)
  project P          ``nets.sampling.sample`` (eager), network in precision P (fp32, bf16)
  project P graph    the same with ``cuda_graph=True`` (CUDA and --cuda-graph only)
  network P          the same number of bare network calls, nothing else
  stub P             ``sample`` with a network that returns a stored output: the sampler alone

The sampler overhead is (project − network) / project, round by round, and, more precisely on a
noisy machine, stub / project. Every step costs the same, so a timed window of W consecutive
steps (``--window``; the whole chain on CUDA) gives images/s = batch / (K × seconds per step).
FLOPs per image are the network's forward FLOPs (FlopCounterMode) times K; a ``network`` row's
GFLOP/s is one call's (its FLOPs × batch per second per call), its share of the machine's measured
matmul peak in that precision beside it. ``--call-variants`` adds bare calls with channels-last
activations and torch.compile'd. A consistency model (``nets.distill --method consistency``) is
timed at its calls (``--samplers consistency``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as `python benchmarks/<script>.py`
    import os
    import sys
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, as with `python -m`
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: benchmarks/__init__.py

import copy
import dataclasses
import os
import sys

import torch
from torch import nn

import diffusion_core as core
from benchmarks import measure, workload
from benchmarks.naive import naive_sample
from nets import cli
from nets.checkpoint import CheckpointError, load_model
from nets.diffusion import Diffusion
from nets.sampling import ChainOptions, DeviceCoefficients, Network, make_coefficients, sample

DEFAULTS = {"batch_sizes": [64], "precision": ["fp32", "auto"], "repeats": 5, "warmup": 1, "window": "auto"}
QUICK = {"batch_sizes": [64], "precision": ["auto"], "repeats": 3, "warmup": 1, "window": 2}
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp-2m": 10, "dpmpp-3m": 10, "sde-dpmpp-2m": 10,
                 "consistency": 2}  # None: T
NAIVE_LOOP = {"ddpm": "ddpm"}  # the tutorial loop each sampler is compared with; DDIM for the rest


class StoredOutput(nn.Module):
    """A stand-in network that returns one stored output: what is left is the sampler's cost."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.output


def first_steps(coeffs: core.ReverseCoefficients, n: int) -> core.ReverseCoefficients:
    """The first ``n`` steps of a chain (the last of them then adds no noise)."""
    return core.ReverseCoefficients(**{f.name: getattr(coeffs, f.name)[:n]
                                       for f in dataclasses.fields(coeffs)})


def model_to_time(args, device: torch.device) -> tuple[nn.Module, Diffusion]:
    """The --checkpoint's model (a distilled student sets the default sampler and steps: its own
    DDIM chain), else a seeded U-Net of the model flags on --timesteps."""
    if args.checkpoint is None:
        args.samplers = args.samplers or ["ddpm", "ddim"]
        model = workload.build_unet(workload.unet_config(args), args.seed).to(device).eval()
        return model, Diffusion(workload.schedule(args.timesteps)).to(device)
    try:
        loaded = load_model(args.checkpoint, "ema", device)
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    args.timesteps = loaded.diffusion.num_timesteps
    if loaded.distilled is not None:
        args.samplers = args.samplers or ["ddim"]
        args.steps = args.steps or [loaded.distilled.steps]
    if loaded.consistency is not None:
        args.samplers = args.samplers or ["consistency"]
        args.steps = args.steps or [loaded.consistency.calls]
    args.samplers = args.samplers or ["ddpm", "ddim"]
    return loaded.model, loaded.diffusion


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m benchmarks.sample_speed", description=__doc__.splitlines()[0])
    workload.add_common_args(p, DEFAULTS, QUICK)
    p.add_argument("--samplers", type=workload.csv_of(str),
                   help=f"comma-separated: {', '.join(DEFAULT_STEPS)} (default: ddpm,ddim; a "
                   f"distilled --checkpoint: ddim at its own steps; a consistency model: "
                   f"consistency at its calls)")
    p.add_argument("--checkpoint", type=cli.existing_path,
                   help="time this trained model (run directory or checkpoint.pt) instead of a "
                   "seeded U-Net of the model flags; its T replaces --timesteps")
    p.add_argument("--steps", type=workload.csv_of(cli.positive_int),
                   help="comma-separated step counts K for every sampler; None: T for ddpm, 50 "
                   "for ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η")
    workload.add_script_arg(p, "--window", DEFAULTS, QUICK, "time this many consecutive steps of "
                            "each chain (0: all; auto: all on CUDA, 10 elsewhere)",
                            type=cli.int_at_least(0))
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time sample(..., cuda_graph=True) (CUDA only)")
    p.add_argument("--call-variants", action="store_true",
                   help="also time the bare network calls with channels-last activations and "
                   "torch.compile'd (the cost of one call, against the machine's peak)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = workload.resolve(build_parser().parse_args(argv), DEFAULTS, QUICK)
    device = args.device
    if args.window == "auto":
        args.window = 0 if device.type == "cuda" else 10
    model, diffusion = model_to_time(args, device)
    unknown = set(args.samplers) - set(DEFAULT_STEPS)
    if unknown:
        cli.fail(f"--samplers: unknown {sorted(unknown)} (use {', '.join(DEFAULT_STEPS)})")
    if args.cuda_graph and device.type != "cuda":
        print("note: --cuda-graph needs CUDA; not timed", file=sys.stderr)
    schedule = diffusion.schedule
    peak_args = (device, args.precision, 2 * args.repeats, args.clock)
    peaks = [measure.matmul_peaks(*peak_args)]
    x2 = torch.randn(2, 1, 28, 28, device=device)
    with torch.inference_mode():
        flops_call = measure.count_flops(lambda: model(x2, torch.full((2,), 500, device=device))) // 2
    machine = measure.machine(device)
    print(f"machine: {machine}\nmodel: {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {flops_call / 1e6:.1f} MFLOP per image per network call\npeak: "
          f"{measure.describe_peaks(peaks[0])}", file=sys.stderr)

    rows = []
    for sampler in args.samplers:
        for steps in args.steps or [DEFAULT_STEPS[sampler] or args.timesteps]:
            if steps > args.timesteps:
                cli.fail(f"--steps: {steps} exceeds --timesteps {args.timesteps}")
            eta = args.eta if sampler == "ddim" else 0.0
            coeffs = make_coefficients(schedule, sampler, steps, eta=eta)
            window = min(args.window or steps, steps)
            for batch in args.batch_sizes:
                rows += time_chain(args, model, diffusion, sampler, steps, coeffs, window, batch,
                                   flops_call)
    peaks = measure.best_peaks([*peaks, measure.matmul_peaks(*peak_args)])
    measure.set_fraction_of_peak(rows, peaks)
    _report(rows, args, machine, peaks, flops_call)
    return 0


def time_chain(args, model, diffusion, sampler, steps, coeffs, window, batch, flops_call):
    """Rows for one (sampler, K, batch): every variant, interleaved."""
    device = args.device
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x_T = torch.randn((batch, 1, 28, 28), generator=gen, device=device)

    def noise_fn(_k: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=device, dtype=like.dtype)

    run_coeffs = DeviceCoefficients(first_steps(coeffs, window)).to(device)
    t = torch.full((batch,), int(coeffs.timesteps[0]), device=device)
    naive_loop = NAIVE_LOOP.get(sampler, "ddim")
    variants = {"naive": lambda: naive_sample(model, diffusion.schedule, naive_loop, steps, x_T, noise_fn,
                                              eta=args.eta if naive_loop == "ddim" else 0.0,
                                              run_steps=window)}
    meta = {"naive": "fp32"}
    for prec in args.precision:
        dtype = workload.autocast_dtype(prec, device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                    enabled=dtype is not None):
            stub = StoredOutput(model(x_T, t).float())

        def network(dtype=dtype):
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                        enabled=dtype is not None, cache_enabled=False):
                for _ in range(window):
                    model(x_T, t)

        def run(net=model, dtype=dtype, graph=False):
            return sample(Network(net, diffusion, dtype), run_coeffs, x_T, noise_fn,
                          ChainOptions(cuda_graph=graph))

        variants[f"project {prec}"] = run
        if args.cuda_graph and device.type == "cuda":
            variants[f"project {prec} graph"] = lambda run=run: run(graph=True)
        variants[f"network {prec}"] = network
        if args.call_variants:
            variants.update(call_variants(model, x_T, t, window, dtype, prec, device))
        variants[f"stub {prec}"] = lambda run=run, stub=stub: run(net=stub)
        meta.update({name: prec for name in variants if name not in meta})
    timings = measure.interleave(variants, args.repeats, args.warmup, device, units=window,
                                   clock=args.clock)
    rows = []
    for name, timing in timings.items():
        kind, prec = name.split()[0], meta[name]
        variant_of_call = name.split()[2:]  # channels-last, compiled: bare network calls
        ips = batch / (steps * timing.median)
        flops = flops_call * steps
        row = {"sampler": f"{sampler}-{steps}", "steps": steps, "window": window, "batch": batch,
               "variant": name, "precision": prec, "seconds_per_step": timing.to_dict(),
               "s_step": timing.median, "spread": timing.spread, "images_per_s": ips,
               "flops_per_image": flops, "gflops_per_s": flops * ips / 1e9,
               "speedup_vs_naive": measure.paired_ratio(timings["naive"], timing),
               "overhead": None, "overhead_stub": None}
        if kind == "project":
            net, stub = timings[f"network {prec}"], timings[f"stub {prec}"]
            row["overhead"] = 1.0 - measure.paired_ratio(net, timing)
            row["overhead_stub"] = measure.paired_ratio(stub, timing)
        if kind in ("network", "stub") or variant_of_call:  # no chain: no images/s of it
            row.update(images_per_s=None, speedup_vs_naive=None,
                       gflops_per_s=flops_call * batch / timing.median / 1e9 if kind == "network" else None)
        rows.append(row)
    return rows


def call_variants(model: nn.Module, x_T: torch.Tensor, t: torch.Tensor, window: int,
                  dtype: torch.dtype | None, prec: str, device: torch.device) -> dict:
    """Bare network calls, ``window`` of them, with channels-last activations (and weights) and
    torch.compile'd (compiled once here, outside the timing)."""
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_x = x_T.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(model))

    def calls(net, x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                    enabled=dtype is not None, cache_enabled=False):
            for _ in range(window):
                net(x, t)

    calls(compiled, x_T)  # compile now, not in the first timed repeat
    return {f"network {prec} channels-last": lambda: calls(cl_model, cl_x),
            f"network {prec} compiled": lambda: calls(compiled, x_T)}


def _report(rows, args, machine, peaks, flops_call) -> None:
    columns = [("sampler", "sampler", "s"), ("batch", "batch", "d"), ("variant", "variant", "s"),
               ("s_step", "s/step", ".5f"), ("spread", "spread", ".0%"), ("images_per_s", "img/s", ".3f"),
               ("gflops_per_s", "GFLOP/s", ".1f"), ("fraction_of_peak", "of peak", ".0%"),
               ("speedup_vs_naive", "x naive", ".2f"), ("overhead", "overhead", ".2%"),
               ("overhead_stub", "stub/proj", ".2%")]
    print(measure.format_table(rows, columns))
    windows = sorted({(r["sampler"], r["window"]) for r in rows})
    print(f"({args.repeats} repeats after {args.warmup} warm-up; timed steps per chain: "
          f"{', '.join(f'{s} {w}' for s, w in windows)}; peaks: {measure.describe_peaks(peaks)}; "
          f"{flops_call / 1e6:.1f} MFLOP/image/call)")
    default = measure.report_default_speedups(
        rows, args.default_precision, lambda r: f"{r['sampler']} b{r['batch']}",
        "the project's chain (nets.sampling.sample, eager) at its default precision; nets.sample's "
        "default sampler is sde-dpmpp-2m at 20 steps", "for")
    if args.json:
        measure.write_json(args.json, {
            "benchmark": "sample_speed", "machine": machine,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "settings": {**workload.settings(args, "samplers", "steps", "eta", "window", "cuda_graph",
                                             "call_variants"),
                         "checkpoint": None if args.checkpoint is None else str(args.checkpoint)},
            "peaks": peaks, "flops_per_image_per_call": flops_call,
            "default_speedup_vs_naive": default,
            "results": [{k: v for k, v in r.items() if k not in ("s_step", "spread")} for r in rows]})


if __name__ == "__main__":
    raise SystemExit(main())
