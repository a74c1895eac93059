"""Generate digits from a trained checkpoint: ``python -m nets.sample``.

Reads: checkpoint (file or run directory) → model (EMA weights by default) → the core's reverse
tables for the chosen sampler → batches of seeded noise (``nets.sampling.generate``) → uint8
images → the files (``nets.sampling.outputs``).

Samplers (all through ``diffusion_core`` step tables):
  ddpm  ancestral sampling, σ² = β̃ (``--variance posterior``) or β (``beta``); Ho et al. (2020)
        Alg. 2; with ``--steps K < T`` the respaced DDPM of Nichol & Dhariwal (2021).
  ddim  DDIM (Song et al. 2021, eq. 12) with ``--eta`` over K respaced steps.

Outputs by ``--out`` extension: ``.npz`` → ``images`` uint8 (N, 28, 28), 0 black, 255 white,
(``labels`` for a conditional model, the settings, ``images_per_second``) plus a PNG grid of
the first 100 beside it; ``.png`` → a grid of all N. ``--trajectory`` adds reverse-diffusion
snapshots (``trajectory`` uint8 (S, 8, 28, 28), ``trajectory_timesteps``) and ``*_reverse.png``.

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
from nets.device import describe_precision, precision_name
from nets.sampling import (
    DeviceCoefficients,
    class_labels,
    generate,
    labels_from_frequencies,
    make_coefficients,
)
from nets.sampling.chain import MULTISTEP, SAMPLERS, SPACINGS, min_steps
from nets.sampling.guidance import AutoGuided, check_guide_matches
from nets.sampling.outputs import OUTPUT_SUFFIXES, write_outputs


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=cli.existing_path,
                   help="checkpoint.pt or a run directory holding one")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="EMA-averaged or raw training weights")
    p.add_argument("--n", type=cli.positive_int, default=64, help="number of images")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="reverse process: ddpm, ddim, or the few-step DPM-Solver++ solvers "
                   "dpmpp-2m, dpmpp-3m (ODE) and sde-dpmpp-2m (stochastic); for a fast sample: "
                   "--sampler dpmpp-2m --steps 10 (docs/results.md: DDIM-50's quality in 10 calls)")
    p.add_argument("--steps", type=cli.positive_int,
                   help="reverse steps K (default: all T of the checkpoint; K < T respaces)")
    p.add_argument("--spacing", choices=SPACINGS, default="trailing",
                   help="how K of the T timesteps are chosen when respacing; logsnr: uniform in "
                   "log-SNR, 0 and T-1 kept (measured worse than trailing on MNIST, docs/results.md)")
    p.add_argument("--eta", type=cli.float_in(0, 1, low_open=False),
                   help="DDIM η (0: deterministic; 1: DDPM-like noise); ddim only, default 0")
    p.add_argument("--variance", choices=get_args(core.Variance),
                   help="DDPM σ²: posterior β̃ or β; ddpm only, default posterior")
    p.add_argument("--digit", help="conditional checkpoints: a digit 0-9, 'all' for 0,1,...,9 "
                   "in turn, or 'frequencies': labels drawn from the training set's class "
                   "frequencies (seeded by --seed), so the samples follow p(x) (default: "
                   "frequencies where the checkpoint records them, else all)")
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


def check_flag_combinations(parser: cli.Parser, args) -> None:
    """Flags that are valid alone but not together: exit 2 naming the flag."""
    if args.out.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"argument --out: extension must be .npz or .png, got {args.out.name!r}")
    if args.eta is not None and args.sampler != "ddim":
        parser.error("argument --eta: applies to --sampler ddim only")
    if args.variance is not None and args.sampler != "ddpm":
        parser.error("argument --variance: applies to --sampler ddpm only")
    if args.digit is not None and args.digit not in [*"0123456789", "all", "frequencies"]:
        parser.error(f"argument --digit: expected 0-9, all or frequencies, got {args.digit!r}")
    if args.sampler in MULTISTEP and args.steps is not None and args.steps < min_steps(args.sampler):
        parser.error(f"argument --steps: {args.sampler} needs at least {min_steps(args.sampler)} "
                     f"steps (its first step has no history and its last is first order)")
    if args.sampler in MULTISTEP and args.cuda_graph:
        parser.error(f"argument --cuda-graph: supports ddpm and ddim only, not {args.sampler}")


def conditioning(loaded, args) -> tuple:
    """(labels, classifier-free guidance w) for the model: requested digits and w for a
    conditional model, (None, None) for an unconditional one (which refuses --digit, and
    --guidance unless it is the autoguidance weight). With --guide-model, w is autoguidance's."""
    autoguided = args.guide_model is not None
    if loaded.conditional:
        guidance = None if args.guidance in (None, 1.0) or autoguided else args.guidance
        return requested_labels(loaded, args), guidance
    if args.digit is not None or (args.guidance is not None and not autoguided):
        cli.fail(f"--digit/--guidance: {loaded.path} is an unconditional model (trained "
                 f"without --conditional); it cannot be asked for a digit")
    return None, None


def digit_request(loaded, args) -> str:
    """--digit, or its default: the class frequencies where the checkpoint records them."""
    if args.digit is not None:
        return args.digit
    return "all" if loaded.class_counts is None else "frequencies"


def requested_labels(loaded, args):
    digit = digit_request(loaded, args)
    if digit != "frequencies":
        return class_labels(args.n, digit)
    if loaded.class_counts is None:
        cli.fail(f"--digit frequencies: {loaded.path} does not record its training set's class "
                 f"counts (written by an older version); use --digit all")
    return labels_from_frequencies(args.n, loaded.class_counts, args.seed)


def with_guide(loaded, args, device):
    """The model to sample: ``loaded.model``, or it autoguided by --guide-model (and w, the
    guide's description for the settings)."""
    if args.guide_model is None:
        return loaded.model, None
    try:
        guide = load_model(args.guide_model, args.weights, device)
        check_guide_matches(loaded.config, guide.config)
    except (CheckpointError, ValueError) as err:
        cli.fail(f"--guide-model: {err}")
    w = 2.0 if args.guidance is None else args.guidance
    return AutoGuided(loaded.model, guide.model, w), {"guide_model": str(guide.path),
                                                      "guide_step": guide.step, "autoguidance": w}


def sampler_description(args, num_steps: int) -> str:
    detail = {"ddim": f", eta {args.eta or 0.0:g}",
              "ddpm": f", variance {args.variance or 'posterior'}"}.get(args.sampler, "")
    return f"{args.sampler} {num_steps} steps{detail}, {args.spacing} spacing"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flag_combinations(parser, args)
    device = cli.device_from_flag(args.device)
    if args.cuda_graph and device.type != "cuda":
        parser.error(f"argument --cuda-graph: needs a CUDA device, got {device}")
    amp_dtype = cli.autocast_from_flag(args.precision, device)
    try:
        loaded = load_model(args.checkpoint, args.weights, device)
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    T = loaded.diffusion.num_timesteps
    if args.steps is not None and args.steps > T:
        cli.fail(f"--steps {args.steps} exceeds the checkpoint's T = {T}")
    labels, guidance = conditioning(loaded, args)
    model, autoguidance = with_guide(loaded, args, device)
    coeffs = DeviceCoefficients(make_coefficients(
        loaded.diffusion.schedule, args.sampler, args.steps, eta=args.eta or 0.0,
        variance=args.variance or "posterior", spacing=args.spacing)).to(device)
    desc = sampler_description(args, coeffs.num_steps)
    print(f"model: {loaded.path} (step {loaded.step}, {args.weights} weights, T={T}); "
          f"sampler: {desc}; device {device}, {describe_precision(amp_dtype)}", file=sys.stderr)
    if autoguidance:
        print(f"autoguidance: w = {autoguidance['autoguidance']:g}, guided by "
              f"{autoguidance['guide_model']} (step {autoguidance['guide_step']})", file=sys.stderr)
    gen = generate(model, loaded.diffusion, coeffs, args.n, args.batch_size, args.seed,
                   device, labels=labels, guidance=guidance, trajectory=args.trajectory,
                   progress=args.progress, autocast_dtype=amp_dtype, cuda_graph=args.cuda_graph)
    settings = {"sampler": args.sampler, "steps": coeffs.num_steps, "eta": args.eta or 0.0,
                "variance": args.variance or "posterior", "spacing": args.spacing,
                "seed": args.seed, "batch_size": args.batch_size, "weights": args.weights,
                "checkpoint": str(loaded.path), "checkpoint_step": loaded.step,
                "device": str(device), "precision": precision_name(amp_dtype),
                "cuda_graph": args.cuda_graph}
    if loaded.conditional:
        settings["guidance"] = 1.0 if guidance is None else guidance
        settings["digit"] = digit_request(loaded, args)
    settings.update(autoguidance or {})
    try:
        written = write_outputs(args.out, gen, settings)
    except OSError as err:
        cli.fail(f"--out: cannot write {args.out}: {err.strerror or err}")
    print(f"sampled {args.n} images ({desc}) in {gen.seconds:.1f}s: "
          f"{gen.images_per_second:.2f} images/s on {device}", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
