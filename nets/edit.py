"""Edit real images with a trained model: ``python -m nets.edit {invert,interpolate,inpaint}``.

    invert       real digits → x_T by deterministic DDIM inversion (--steps K), decoded back;
                 the .npz holds images (originals), latents (float32), reconstructions, and the
                 round-trip error per image (RMS on [0, 1] pixels) is printed.
    interpolate  between two seeds (--seeds 1,2) or two real digits (--index 3,7, via their
                 inverted latents): slerp of x_T, --frames F decoded in order (images).
    inpaint      one digit (--index i) with a --mask (or --mask-file) of known pixels: --n
                 completions (images), with RePaint resampling (--resample R); original and
                 known (bool H×W) saved; the known pixels come back exactly as given.

The real images are those of the dataset the checkpoint records (--dataset edits another of the
same shape); masks scale with the image. Each writes --out FILE.npz (uint8 images plus the arrays
above) and a PNG figure beside it. On a conditional checkpoint --class (--digit on MNIST) and
--guidance decode under that label ("turn this 3 into an 8") or constrain the completion. Bad
input exits 2 with one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nets import cli, figures
from nets.checkpoint import CheckpointError, load_model
from nets.data.dataset import DATA_ERRORS
from nets.editing.inpaint import InpaintSettings
from nets.editing.inversion import round_trip_error
from nets.editing.masks import MASKS, mask_from_png, named_mask
from nets.files import save_npz_atomic
from nets.pipeline import Pipeline
from nets.pixels import images_to_uint8


def index_list(text: str) -> list[int]:
    """``0-15,42`` → [0, 1, ..., 15, 42] (argparse type)."""
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected indices like 0-15,42, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative indices like 0-15,42, got {text!r}")
    return out


def seed_pair(text: str) -> list[int]:
    seeds = [cli.seed_value(s) for s in text.split(",")]
    if len(seeds) != 2:
        raise argparse.ArgumentTypeError(f"expected two seeds like 1,2, got {text!r}")
    return seeds


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.edit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    commands = (("invert", "real digits → x_T → digits"), ("interpolate", "a path between two latents"),
                ("inpaint", "fill in the unknown pixels of a digit"))
    for name, help_ in commands:
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--checkpoint", required=True, type=cli.existing_path,
                       help="checkpoint.pt or a run directory holding one")
        cli.add_device(s)
        cli.add_seed(s, "seed of every random draw")
        cli.add_precision(s, "The updates stay fp32")
        s.add_argument("--dataset", help="the real images to edit: a dataset name or a folder (default: "
                       "the one the checkpoint was trained on; it must have the model's image shape)")
        cli.add_data_dir(s)
        s.add_argument("--split", choices=["train", "test"], default="test",
                       help="the real images' split (of a named dataset)")
        s.add_argument("--out", type=Path, default=Path(f"{name}.npz"),
                       help="the .npz (a .png figure beside it)")
        s.add_argument("--steps", type=cli.int_at_least(2), default=50 if name != "inpaint" else 100,
                       help="DDIM steps K (invert, interpolate) or respaced DDPM steps (inpaint)")
        s.add_argument("--class", "--digit", dest="label",
                       help="conditional checkpoints: the class to decode or complete under, by name or "
                       "index (an MNIST digit 0-9; --digit is the same flag)")
        s.add_argument("--guidance", type=cli.float_in(float("-inf"), float("inf"), high_open=True),
                       help="conditional checkpoints: classifier-free guidance w (1: plain conditional)")
        s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        if name == "invert":
            s.add_argument("--index", type=index_list, default="0", help="digits of --split, e.g. 0-15,42")
        if name == "interpolate":
            s.add_argument("--seeds", type=seed_pair, help="two seeds of x_T, e.g. 1,2")
            s.add_argument("--index", type=index_list, help="two real digits (via their latents), e.g. 3,7")
            s.add_argument("--frames", type=cli.int_at_least(2), default=9,
                           help="frames of the path (ends included)")
        if name == "inpaint":
            s.add_argument("--index", type=index_list, default="0", help="the digit of --split to complete")
            s.add_argument("--mask", choices=MASKS, default="left",
                           help="known pixels: left/right/top/bottom half, all but the center, a random half")
            s.add_argument("--mask-file", type=cli.existing_path,
                           help="a black-and-white PNG of the model's image size, white = known "
                           "(instead of --mask)")
            s.add_argument("--n", type=cli.positive_int, default=8, help="completions")
            s.add_argument("--resample", type=cli.positive_int, default=5,
                           help="RePaint resampling: each step taken R times, jumping back in between")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)  # every bad value exits here, before the model loads
    cli.warnings_as_lines()
    device = cli.device_from_flag(args.device)
    amp = cli.autocast_from_flag(args.precision, device)
    try:
        pipe = Pipeline(load_model(args.checkpoint, "ema", device), amp, progress=args.progress)
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    try:
        pipe.edit_options(1, args.label, args.guidance)  # the label and guidance this model takes
    except ValueError as err:
        cli.fail(f"--class/--guidance: {err}")
    inputs = read_inputs(pipe, args)
    print(f"model: {pipe.describe()}", file=sys.stderr)
    run = {"invert": run_invert, "interpolate": run_interpolate, "inpaint": run_inpaint}[args.command]
    arrays, rows = run(pipe, args, inputs)
    try:
        save_npz_atomic(args.out, **arrays)
        figures.save_digit_rows(args.out.with_suffix(".png"), rows)
    except OSError as err:
        cli.fail(f"--out: cannot write {args.out}: {err.strerror or err}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


def check_flags(parser: cli.Parser, args) -> None:
    """Exit 2 naming the flag for a value that needs no model to be wrong."""
    if args.out.suffix != ".npz":
        parser.error(f"argument --out: must end in .npz, got {args.out.name!r}")
    if args.command == "interpolate":
        if (args.seeds is None) == (args.index is None):
            cli.fail("--seeds/--index: give exactly one of --seeds A,B and --index I,J")
        if args.index is not None and len(args.index) != 2:
            cli.fail(f"--index: interpolate takes two digits, got {len(args.index)}")
    if args.command == "inpaint" and len(args.index) != 1:
        cli.fail(f"--index: inpaint completes one image, got {len(args.index)}")


def read_inputs(pipe: Pipeline, args) -> dict:
    """The real images and the mask the command needs, at the model's size, or exit 2 naming the flag."""
    inputs = {}
    if args.command == "inpaint":
        size = pipe.shape[1]
        try:
            inputs["known"] = mask_from_png(args.mask_file, size) if args.mask_file else \
                named_mask(args.mask, args.seed, size)
        except ValueError as err:
            cli.fail(f"--mask-file: {err}")
    if args.index is not None:
        inputs["digits"] = real_images(pipe, args, args.index)
    return inputs


def real_images(pipe: Pipeline, args, indices: list[int]) -> np.ndarray:
    """Images ``indices`` of the dataset (the checkpoint's, or --dataset), in the model's shape."""
    try:
        real = pipe.real_images(args.split, args.data_dir, dataset=args.dataset)
    except DATA_ERRORS as err:
        cli.fail(str(err))
    except ValueError as err:
        cli.fail(f"--dataset: {err}")
    bad = [i for i in indices if i >= len(real)]
    if bad:
        cli.fail(f"--index: {bad[0]} is out of range: {real.info.title} {args.split} has {len(real)} "
                 f"images (0-{len(real) - 1})")
    return np.asarray(real.images[indices])


def run_invert(pipe: Pipeline, args, inputs) -> tuple[dict, list]:
    originals = inputs["digits"]
    digit, guidance = args.label, args.guidance  # None: a conditional model's "no label"
    latents = pipe.invert(originals, steps=args.steps, digit=digit, guidance=guidance)
    back = pipe.decode(latents, steps=args.steps, digit=digit, guidance=guidance)
    errors = round_trip_error(originals, back)
    for i, e in zip(args.index, errors, strict=True):
        print(f"image {i}: round-trip RMS error {e:.4f}", file=sys.stderr)
    print(f"round trip over {len(originals)} images, K = {args.steps}: mean RMS error {errors.mean():.4f} "
          f"(on [0, 1] pixels)", file=sys.stderr)
    lat = layout_latents(latents)
    arrays = {"images": originals, "latents": lat, "reconstructions": back,
              "round_trip_error": errors, "index": np.asarray(args.index), "steps": np.int64(args.steps)}
    shown = images_to_uint8(np.clip(lat / 3.0, -1, 1))  # ±3σ of the latent as black..white
    return arrays, [("original", originals), ("latent", shown), ("decoded", back)]


def run_interpolate(pipe: Pipeline, args, inputs) -> tuple[dict, list]:
    digit, guidance = args.label, args.guidance  # None: a conditional model's "no label"
    ends = args.seeds if args.seeds is not None else list(inputs["digits"])
    frames, path = pipe.interpolate(ends[0], ends[1], frames=args.frames, steps=args.steps, digit=digit,
                                    guidance=guidance)
    arrays = {"images": frames, "latents": layout_latents(path)}
    return arrays, [("slerp path", frames)]


def run_inpaint(pipe: Pipeline, args, inputs) -> tuple[dict, list]:
    known, original = inputs["known"], inputs["digits"][0]
    digit, guidance = args.label, args.guidance  # None: a conditional model's "no label"
    settings = InpaintSettings(args.n, args.steps, args.resample, args.progress)
    images = pipe.inpaint(original, known, settings=settings, digit=digit, guidance=guidance, seed=args.seed)
    shown = known if original.ndim == 2 else known[..., None]
    masked = np.where(shown, original, 64).astype(np.uint8)  # unknown pixels shown grey
    arrays = {"images": images, "original": original, "known": known, "index": np.int64(args.index[0])}
    return arrays, [("original, masked", np.stack([original, masked])), ("completions", images)]


def layout_latents(latents) -> np.ndarray:
    """Latents (N, C, H, W) as float32 in the pixel layout: (N, H, W) for one channel, else (N, H, W, C)."""
    lat = latents.float().cpu().numpy()
    return (lat[:, 0] if lat.shape[1] == 1 else np.moveaxis(lat, 1, -1)).astype(np.float32)


if __name__ == "__main__":
    raise SystemExit(main())
