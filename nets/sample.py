"""Generate images from a trained checkpoint: ``python -m nets.sample``.

The command is :meth:`nets.Pipeline.sample` plus flags and files: checkpoint (file or run
directory) → ``nets.load`` (EMA weights by default) → the core's reverse tables for the chosen
sampler → batches of seeded noise → uint8 images → the files (``nets.sampling.outputs``).

Samplers (all through ``diffusion_core`` step tables; docs/results.md compares them):
  ddpm          ancestral sampling, σ² = β̃ (``--variance posterior``) or β (``beta``); Ho et al.
                (2020) Alg. 2; with ``--steps K < T`` the respaced DDPM of Nichol & Dhariwal (2021)
  ddim          DDIM (Song et al. 2021, eq. 12) with ``--eta`` over K respaced steps
  dpmpp-2m      DPM-Solver++ 2M (Lu et al. 2022, Alg. 2), second-order multistep ODE solver
  dpmpp-3m      the third-order multistep solver of the same family
  sde-dpmpp-2m  SDE-DPM-Solver++ 2M, the stochastic second-order solver: the default, at 20 steps
                (the best quality per network call measured)

Outputs by ``--out`` extension: ``.npz`` → ``images`` uint8 (N, H, W) for one channel or
(N, H, W, 3) for colour, 0 black, 255 white (``labels`` and the dataset's ``class_names`` for a
conditional model, the settings, ``images_per_second``) plus a PNG grid of the first 100 beside
it; ``.png`` → a grid of all N. ``--trajectory`` adds reverse-diffusion snapshots (``trajectory``
uint8 (S, 8, H, W[, 3]), ``trajectory_timesteps``) and ``*_reverse.png``.

Repeatability: the images are a function of (checkpoint, settings, --seed, --batch-size,
device): one generator, seeded once, draws x_T and every z batch after batch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import diffusion_core as core
from nets import cli
from nets.checkpoint import CheckpointError, load_model
from nets.fields import ConfigError
from nets.pipeline import DEFAULT_AUTOGUIDANCE, Pipeline
from nets.sampling.chain import check_cuda_graph
from nets.sampling.outputs import OUTPUT_SUFFIXES, write_outputs
from nets.sampling.settings import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    SOLVER_STEPS,
    SPACINGS,
    SampleOptions,
    SamplerSettings,
)


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=cli.existing_path,
                   help="checkpoint.pt or a run directory holding one")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="EMA-averaged or raw training weights")
    p.add_argument("--n", type=cli.positive_int, default=64, help="number of images")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help=f"reverse process: the DPM-Solver++ solvers sde-dpmpp-2m (stochastic; the "
                   f"best quality per network call measured, docs/results.md), dpmpp-2m, dpmpp-3m "
                   f"(ODE), or ddim, or ddpm (the paper's ancestral chain) (default: {DEFAULT_SAMPLER}; "
                   f"for a nets.distill student, ddim at the steps it was distilled for)")
    p.add_argument("--steps", type=cli.positive_int,
                   help=f"reverse steps K (default: {SOLVER_STEPS} for the DPM-Solver++ solvers, all "
                   f"T of the checkpoint for ddpm and ddim, a distilled student's own K; K < T "
                   f"respaces)")
    p.add_argument("--spacing", choices=SPACINGS, default="trailing",
                   help="how K of the T timesteps are chosen when respacing; logsnr: uniform in "
                   "log-SNR, 0 and T-1 kept (measured worse than trailing on MNIST, docs/results.md)")
    p.add_argument("--eta", type=cli.float_in(0, 1, low_open=False),
                   help="DDIM η (0: deterministic; 1: DDPM-like noise); ddim only, default 0")
    p.add_argument("--variance", choices=get_args(core.Variance),
                   help="DDPM σ²: posterior β̃ or β; ddpm only, default posterior")
    p.add_argument("--class", "--digit", dest="label",
                   help="conditional checkpoints: a class of the dataset by name (sneaker) or index "
                   "(7; on MNIST the digit), 'all' for every class in turn, or 'frequencies': labels "
                   "drawn from the training set's class frequencies (seeded by --seed), so the samples "
                   "follow p(x) (default: frequencies where the checkpoint records them, else all); "
                   "--digit is the same flag")
    p.add_argument("--guidance", type=cli.float_in(float("-inf"), float("inf"), high_open=True),
                   help="conditional checkpoints: classifier-free guidance w, "
                        "ε = ε_u + w(ε_c − ε_u); 1 plain conditional (default), 0 unconditional. "
                        "With --guide-model: the autoguidance weight (default 2)")
    p.add_argument("--guide-model", type=cli.existing_path,
                   help="autoguidance (Karras et al. 2024): a worse version of the model, e.g. an "
                   "early checkpoint of its run (nets.train --keep-checkpoints); ε = ε_guide + "
                   "w(ε − ε_guide), no labels needed, two network calls per step")
    p.add_argument("--batch-size", type=cli.positive_int, default=256, help="images per batch")
    cli.add_seed(p, "seed of x_T and every step's noise")
    cli.add_device(p)
    cli.add_precision(p, "The update x_t → x_{t-1} stays fp32")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA only: replay one captured step per batch (same images, faster)")
    p.add_argument("--out", type=Path, default=Path("samples.npz"),
                   help="output: .npz (images + a grid PNG beside it) or .png (grid only)")
    p.add_argument("--trajectory", action="store_true",
                   help="also save reverse-diffusion snapshots and *_reverse.png")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    return p


def sampler_settings(args, pipe: Pipeline) -> SamplerSettings:
    """The flags' sampler; where --sampler is not given, the model's default (a distilled
    student's own DDIM chain) with the flags' --steps/--spacing on it."""
    if args.sampler is None:
        default = pipe.default_sampler
        if default.sampler == "consistency":  # its recorded times; --spacing does not apply
            return pipe.consistency_sampler(args.steps)
        return SamplerSettings(default.sampler, args.steps or default.steps, args.eta, args.variance,
                               args.spacing)
    if args.sampler == "consistency":
        return pipe.consistency_sampler(args.steps)
    return SamplerSettings(args.sampler, args.steps, args.eta, args.variance, args.spacing)


def pipeline_or_exit(args, device) -> Pipeline:
    """The checkpoint (autoguided by --guide-model), or exit 2 naming the flag."""
    try:
        pipe = Pipeline(load_model(args.checkpoint, args.weights, device),
                        cli.autocast_from_flag(args.precision, device))
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    if args.guide_model is None:
        return pipe
    weight = DEFAULT_AUTOGUIDANCE if args.guidance is None else args.guidance
    try:
        return pipe.with_guide(args.guide_model, weight)
    except (CheckpointError, ValueError) as err:
        cli.fail(f"--guide-model: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"argument --out: extension must be .npz or .png, got {args.out.name!r}")
    cli.warnings_as_lines()
    try:
        return sample_to_files(args)
    except ConfigError as err:  # each option is checked once, by the library; here it names the flag
        cli.fail(f"{'--class' if err.field == 'label' else cli.flag_of(err.field)}: {err.reason}")


def sample_to_files(args) -> int:
    device = cli.device_from_flag(args.device)
    pipe = pipeline_or_exit(args, device)
    sampler = sampler_settings(args, pipe)
    desc = pipe.describe_sampler(sampler)
    guidance = None if pipe.guide else args.guidance
    pipe.conditioning(1, args.label, guidance)  # the labels and guidance this model takes
    options = SampleOptions(args.batch_size, cuda_graph=args.cuda_graph, progress=args.progress,
                            trajectory=args.trajectory)
    check_cuda_graph(options.cuda_graph, sampler.multistep, device)  # the chain's check, before any output
    print(f"model: {pipe.describe()}; sampler: {desc}", file=sys.stderr)
    if pipe.guide is not None:
        print(f"autoguidance: w = {pipe.guide_weight:g}, guided by {pipe.guide.path} "
              f"(step {pipe.guide.step})", file=sys.stderr)
    gen = pipe.sample(args.n, label=args.label, guidance=guidance, sampler=sampler, seed=args.seed,
                      options=options)
    try:
        written = write_outputs(args.out, gen, gen.settings)
    except OSError as err:
        cli.fail(f"--out: cannot write {args.out}: {err.strerror or err}")
    print(f"sampled {args.n} images ({desc}) in {gen.seconds:.1f}s: "
          f"{gen.images_per_second:.2f} images/s on {device}", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
