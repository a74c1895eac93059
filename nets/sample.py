"""Generate digits from a trained checkpoint: ``python -m nets.sample``.

Reads: checkpoint (file or run directory) → model (EMA weights by default) → the core's reverse
tables for the chosen sampler → batches of seeded noise through ``nets.sampling.sample`` →
uint8 images. Only uint8 images (N·784 bytes) are kept across batches, so N is bounded by disk,
not by device memory.

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

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import diffusion_core as core
from nets import cli
from nets.checkpoint import CheckpointError, atomic_write, load_checkpoint
from nets.data import images_to_uint8
from nets.diffusion import Diffusion
from nets.sampling import DeviceCoefficients, make_coefficients, sample
from nets.unet import UNet, UNetConfig

IMAGE_SHAPE = (1, 28, 28)
TRAJECTORY_CHAINS = 8
TRAJECTORY_SNAPSHOTS = 10
GRID_IMAGES = 100  # the PNG beside an .npz shows this many


# ---------------------------------------------------------------------------------------------
# Loading a checkpoint


@dataclass
class LoadedModel:
    model: UNet
    diffusion: Diffusion
    config: dict  # the TrainConfig saved in the checkpoint, as a dict
    step: int
    path: Path

    @property
    def conditional(self) -> bool:
        return self.model.config.num_classes > 0


def load_model(path: str | os.PathLike, weights: str = "ema",
               device: torch.device | str = "cpu") -> LoadedModel:
    """The U-Net and Diffusion a checkpoint describes; any mismatch is a CheckpointError."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    state = load_checkpoint(path)
    resolved = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    cfg = state["config"]
    try:
        if not isinstance(cfg, dict):
            raise TypeError(f"config is a {type(cfg).__name__}, not a dict")
        betas = core.make_betas(cfg["schedule"], int(cfg["timesteps"]))
        diffusion = Diffusion(core.DiffusionSchedule.from_betas(betas), cfg.get("objective", "eps"))
        unet_config = UNetConfig.from_dict(cfg["unet"])
        model = UNet(unet_config)
        step = int(state.get("step", 0))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{resolved} is not a DDPM checkpoint of this package "
                              f"(its config does not describe a U-Net and schedule: "
                              f"{type(err).__name__}: {err})") from None
    if (unet_config.in_channels, unet_config.image_size) != (IMAGE_SHAPE[0], IMAGE_SHAPE[1]):
        raise CheckpointError(f"{resolved} is a model of {unet_config.in_channels}×"
                              f"{unet_config.image_size}² images, not MNIST's 1×28²")
    key = "ema" if weights == "ema" else "model"
    if not isinstance(state.get(key), dict):
        raise CheckpointError(f"{resolved} holds no {weights} weights"
                              + (" (try --weights raw)" if weights == "ema" else ""))
    try:
        model.load_state_dict(state[key])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"the weights in {resolved} do not fit the U-Net its config "
                              f"describes: {' '.join(str(err).split())[:300]}") from None
    model.requires_grad_(False)
    return LoadedModel(model.to(device).eval(), diffusion.to(device), cfg, step, resolved)


# ---------------------------------------------------------------------------------------------
# Generating N images in batches


@dataclass
class Generated:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray | None  # (N,) int64 for a conditional model
    trajectory: np.ndarray | None  # (S, chains, 28, 28) uint8, noisiest first
    trajectory_timesteps: list[int]  # paper step of each snapshot; 0 is the final image
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.images) / max(self.seconds, 1e-9)


class Progress:
    """A one-line progress bar on stderr: images done, images/s and ETA."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        line = (f"sampling {done}/{self.total} [{100 * done / self.total:5.1f}%] "
                f"{rate:7.2f} img/s ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def generate(model: torch.nn.Module, diffusion: Diffusion, coeffs: DeviceCoefficients, n: int,
             batch_size: int, seed: int, device: torch.device | str = "cpu",
             labels: np.ndarray | None = None, guidance: float | None = None,
             trajectory: bool = False, clip_x0: bool = True, progress: bool = False,
             autocast_dtype: torch.dtype | None = None, cuda_graph: bool = False) -> Generated:
    """``n`` uint8 images from the reverse chain, ``batch_size`` at a time.

    One generator seeded with ``seed`` draws x_T and each step's z, batch after batch.
    ``labels`` (n,) conditions a class-conditional model (``guidance`` w: ε_u + w(ε_c − ε_u),
    None = plain conditional). ``trajectory`` records snapshots of the first batch's first 8
    chains. ``autocast_dtype`` and ``cuda_graph`` are passed to ``nets.sampling.sample``.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def noise_fn(_k: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=device, dtype=like.dtype)

    images = np.empty((n, *IMAGE_SHAPE[1:]), dtype=np.uint8)
    snaps, snap_t = None, []
    bar = Progress(n, progress)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x_T = torch.randn((b, *IMAGE_SHAPE), generator=gen, device=device)
        y = None
        if labels is not None:
            y = torch.as_tensor(labels[start:start + b], dtype=torch.long, device=device)
        record = TRAJECTORY_SNAPSHOTS if trajectory and start == 0 else 0
        result = sample(model, diffusion, coeffs, x_T, noise_fn, y=y, clip_x0=clip_x0,
                        guidance=guidance, num_snapshots=record, autocast_dtype=autocast_dtype,
                        cuda_graph=cuda_graph)
        images[start:start + b] = images_to_uint8(result.images)
        if record:
            chains = min(TRAJECTORY_CHAINS, b)
            snaps = np.stack([images_to_uint8(s[:chains]) for s in result.snapshots])
            snap_t = list(result.snapshot_timesteps)
        bar.update(start + b)
    bar.close()
    return Generated(images, None if labels is None else np.asarray(labels, np.int64), snaps,
                     snap_t, time.perf_counter() - t0)


def class_labels(n: int, digit: str) -> np.ndarray:
    """``all`` → 0, 1, ..., 9, 0, 1, ... ; a digit d → n copies of d. (n,) int64."""
    if digit == "all":
        return np.arange(n, dtype=np.int64) % 10
    return np.full(n, int(digit), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Writing the outputs


def save_npz_atomic(path: Path, **arrays) -> Path:
    """``np.savez`` through :func:`nets.checkpoint.atomic_write`: never a torn .npz."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def write_outputs(out: Path, gen: Generated, settings: dict) -> list[Path]:
    """The .npz (+ grid PNG) or the .png grid, and the reverse figure; returns the paths."""
    from nets import figures

    written = []
    if out.suffix == ".npz":
        arrays = {"images": gen.images, "images_per_second": np.float64(gen.images_per_second)}
        arrays.update({k: np.asarray(v) for k, v in settings.items()})
        if gen.labels is not None:
            arrays["labels"] = gen.labels
        if gen.trajectory is not None:
            arrays["trajectory"] = gen.trajectory
            arrays["trajectory_timesteps"] = np.asarray(gen.trajectory_timesteps, np.int64)
        written.append(save_npz_atomic(out, **arrays))
        grid_path = out.with_suffix(".png")
        figures.save_grid(gen.images[:GRID_IMAGES], grid_path, ncol=10)
    else:
        grid_path = out
        out.parent.mkdir(parents=True, exist_ok=True)
        figures.save_grid(gen.images, grid_path)
    written.append(grid_path)
    if gen.trajectory is not None:
        reverse_path = out.with_name(f"{out.stem}_reverse.png")
        figures.plot_reverse(gen.trajectory, gen.trajectory_timesteps, reverse_path)
        written.append(reverse_path)
    return written


# ---------------------------------------------------------------------------------------------
# The command line


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=cli.existing_path,
                   help="checkpoint.pt or a run directory holding one")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="EMA-averaged or raw training weights")
    p.add_argument("--n", type=cli.positive_int, default=64, help="number of images")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="reverse process")
    p.add_argument("--steps", type=cli.positive_int,
                   help="reverse steps K (default: all T of the checkpoint; K < T respaces)")
    p.add_argument("--spacing", choices=["leading", "trailing", "linspace"], default="trailing",
                   help="how K of the T timesteps are chosen when respacing")
    p.add_argument("--eta", type=cli.float_in(0, 1, low_open=False),
                   help="DDIM η (0: deterministic; 1: DDPM-like noise); ddim only, default 0")
    p.add_argument("--variance", choices=["posterior", "beta"],
                   help="DDPM σ²: posterior β̃ or β; ddpm only, default posterior")
    p.add_argument("--digit", help="conditional checkpoints: a digit 0-9, or 'all' for "
                   "0,1,...,9 in turn (default all)")
    p.add_argument("--guidance", type=cli.float_in(float("-inf"), float("inf"), high_open=True),
                   help="conditional checkpoints: classifier-free guidance w, "
                        "ε = ε_u + w(ε_c − ε_u); 1 plain conditional (default), 0 unconditional")
    p.add_argument("--batch-size", type=cli.positive_int, default=256, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and every step's noise")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--precision", choices=cli.PRECISIONS, default="auto",
                   help="the network's arithmetic: bf16 autocast or fp32; auto = bf16 where the "
                   "device has it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32. The "
                   "update x_t → x_{t-1} stays fp32")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA only: replay one captured step per batch (same images, faster)")
    p.add_argument("--out", type=Path, default=Path("samples.npz"),
                   help="output: .npz (images + a grid PNG beside it) or .png (grid only)")
    p.add_argument("--trajectory", action="store_true",
                   help="also save reverse-diffusion snapshots and *_reverse.png")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix not in (".npz", ".png"):
        parser.error(f"argument --out: extension must be .npz or .png, got {args.out.name!r}")
    if args.eta is not None and args.sampler != "ddim":
        parser.error("argument --eta: applies to --sampler ddim only")
    if args.variance is not None and args.sampler != "ddpm":
        parser.error("argument --variance: applies to --sampler ddpm only")
    if args.digit is not None and args.digit != "all" and args.digit not in list("0123456789"):
        parser.error(f"argument --digit: expected 0-9 or all, got {args.digit!r}")
    device = cli.pick_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        parser.error(f"argument --cuda-graph: needs a CUDA device, got {device}")
    amp_dtype = cli.autocast_dtype(args.precision, device)
    try:
        loaded = load_model(args.checkpoint, args.weights, device)
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    T = loaded.diffusion.num_timesteps
    if args.steps is not None and args.steps > T:
        cli.fail(f"--steps {args.steps} exceeds the checkpoint's T = {T}")
    labels, guidance = None, None
    if loaded.conditional:
        labels = class_labels(args.n, args.digit or "all")
        guidance = None if args.guidance in (None, 1.0) else args.guidance
    elif args.digit is not None or args.guidance is not None:
        cli.fail(f"--digit/--guidance: {loaded.path} is an unconditional model (trained "
                 f"without --conditional); it cannot be asked for a digit")

    coeffs = DeviceCoefficients(make_coefficients(
        loaded.diffusion.schedule, args.sampler, args.steps, eta=args.eta or 0.0,
        variance=args.variance or "posterior", spacing=args.spacing)).to(device)
    desc = (f"{args.sampler} {coeffs.num_steps} steps"
            + (f", eta {args.eta or 0.0:g}" if args.sampler == "ddim" else
               f", variance {args.variance or 'posterior'}"))
    print(f"model: {loaded.path} (step {loaded.step}, {args.weights} weights, T={T}); "
          f"sampler: {desc}; device {device}, {cli.describe_precision(amp_dtype)}", file=sys.stderr)
    gen = generate(loaded.model, loaded.diffusion, coeffs, args.n, args.batch_size, args.seed,
                   device, labels=labels, guidance=guidance, trajectory=args.trajectory,
                   progress=args.progress,
                   autocast_dtype=amp_dtype,
                   cuda_graph=args.cuda_graph)
    settings = {"sampler": args.sampler, "steps": coeffs.num_steps, "eta": args.eta or 0.0,
                "variance": args.variance or "posterior", "spacing": args.spacing,
                "seed": args.seed, "batch_size": args.batch_size, "weights": args.weights,
                "checkpoint": str(loaded.path), "checkpoint_step": loaded.step,
                "device": str(device), "precision": "bf16" if amp_dtype else "fp32",
                "cuda_graph": args.cuda_graph}
    if loaded.conditional:
        settings["guidance"] = 1.0 if guidance is None else guidance
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
