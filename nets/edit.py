"""Edit real digits with a trained model: ``python -m nets.edit {invert,interpolate,inpaint}``.

    invert       real digits → x_T by deterministic DDIM inversion (--steps K), decoded back;
                 the .npz holds images (originals), latents (float32), reconstructions, and the
                 round-trip error per image (RMS on [0, 1] pixels) is printed.
    interpolate  between two seeds (--seeds 1,2) or two real digits (--index 3,7, via their
                 inverted latents): slerp of x_T, --frames F decoded in order (images).
    inpaint      one digit (--index i) with a --mask (or --mask-file) of known pixels: --n
                 completions (images), with RePaint resampling (--resample R); original and
                 known (bool 28×28) saved; the known pixels come back exactly as given.

Each writes --out FILE.npz (uint8 images plus the arrays above) and a PNG figure beside it. On a
conditional checkpoint --digit and --guidance decode under that label ("turn this 3 into an 8")
or constrain the completion. Bad input exits 2 with one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from nets import cli
from nets.checkpoint import CheckpointError, LoadedModel, load_model
from nets.device import describe_precision
from nets.editing.inpaint import inpaint
from nets.editing.inversion import decode, interpolate, invert, round_trip_error
from nets.editing.masks import MASKS, mask_from_png, named_mask
from nets.files import save_npz_atomic
from nets.pixels import IMAGE_SHAPE, NUM_CLASSES, images_to_uint8, to_training_tensor


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
        cli.add_data_dir(s)
        s.add_argument("--split", choices=["train", "test"], default="test", help="the real digits' split")
        s.add_argument("--out", type=Path, default=Path(f"{name}.npz"),
                       help="the .npz (a .png figure beside it)")
        s.add_argument("--steps", type=cli.int_at_least(2), default=50 if name != "inpaint" else 100,
                       help="DDIM steps K (invert, interpolate) or respaced DDPM steps (inpaint)")
        s.add_argument("--digit", help="conditional checkpoints: the label to decode or complete under, 0-9")
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
                           help="a 28×28 black-and-white PNG, white = known (instead of --mask)")
            s.add_argument("--n", type=cli.positive_int, default=8, help="completions")
            s.add_argument("--resample", type=cli.positive_int, default=5,
                           help="RePaint resampling: each step taken R times, jumping back in between")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = check_inputs(parser, args)  # every bad value exits here, before the model loads
    device = cli.device_from_flag(args.device)
    amp = cli.autocast_from_flag(args.precision, device)
    try:
        loaded = load_model(args.checkpoint, "ema", device)
    except CheckpointError as err:
        cli.fail(f"--checkpoint: {err}")
    y, guidance = conditioning(loaded, args, device)
    print(f"model: {loaded.path} (step {loaded.step}); {describe_precision(amp)} on {device}",
          file=sys.stderr)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    run = {"invert": run_invert, "interpolate": run_interpolate, "inpaint": run_inpaint}[args.command]
    arrays, figure = run(args, inputs, loaded, device, amp, y, guidance, gen)
    try:
        save_npz_atomic(args.out, **arrays)
        figure(args.out.with_suffix(".png"))
    except OSError as err:
        cli.fail(f"--out: cannot write {args.out}: {err.strerror or err}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


def check_inputs(parser: cli.Parser, args) -> dict:
    """The real digits and the mask the command needs, or exit 2 naming the flag."""
    if args.out.suffix != ".npz":
        parser.error(f"argument --out: must end in .npz, got {args.out.name!r}")
    inputs = {}
    if args.command == "interpolate":
        if (args.seeds is None) == (args.index is None):
            cli.fail("--seeds/--index: give exactly one of --seeds A,B and --index I,J")
        if args.index is not None and len(args.index) != 2:
            cli.fail(f"--index: interpolate takes two digits, got {len(args.index)}")
    if args.command == "inpaint":
        if len(args.index) != 1:
            cli.fail(f"--index: inpaint completes one digit, got {len(args.index)}")
        try:
            known = mask_from_png(args.mask_file) if args.mask_file else named_mask(args.mask, args.seed)
            inputs["known"] = known
        except ValueError as err:
            cli.fail(f"--mask-file: {err}")
    if args.index is not None:
        inputs["digits"] = real_digits(args, args.index)
    return inputs


def conditioning(loaded: LoadedModel, args, device) -> tuple[torch.Tensor | None, float | None]:
    """The label (as a 1-element tensor, broadcast later) and guidance for a conditional model."""
    if not loaded.conditional:
        if args.digit is not None or args.guidance is not None:
            cli.fail(f"--digit/--guidance: {loaded.path} is an unconditional model")
        return None, None
    if args.digit is None:
        if args.guidance is not None:
            cli.fail("--guidance: needs --digit (the label to guide towards)")
        return torch.full((1,), NUM_CLASSES, device=device), None  # "no label"
    if args.digit not in [str(d) for d in range(NUM_CLASSES)]:
        cli.fail(f"--digit: expected 0-9, got {args.digit!r}")
    guidance = None if args.guidance in (None, 1.0) else args.guidance
    return torch.full((1,), int(args.digit), device=device), guidance


def real_digits(args, indices: list[int]) -> np.ndarray:
    arrays = cli.mnist_or_exit(args.data_dir, args.split)
    bad = [i for i in indices if i >= len(arrays.images)]
    if bad:
        cli.fail(f"--index: {bad[0]} is out of range: MNIST {args.split} has {len(arrays.images)} digits (0-"
                 f"{len(arrays.images) - 1})")
    return np.asarray(arrays.images[indices])


def labels_for(y, n):
    return None if y is None else y.expand(n)


def run_invert(args, inputs, loaded, device, amp, y, guidance, gen):
    originals = inputs["digits"]
    x0 = to_training_tensor(originals, device)
    n = len(originals)
    with torch.inference_mode():
        latents = invert(loaded.model, loaded.diffusion, x0, args.steps, labels_for(y, n), guidance, amp)
        back = images_to_uint8(decode(loaded.model, loaded.diffusion, latents, args.steps,
                                      labels_for(y, n), guidance, amp))
    errors = round_trip_error(originals, back)
    for i, e in zip(args.index, errors, strict=True):
        print(f"digit {i}: round-trip RMS error {e:.4f}", file=sys.stderr)
    print(f"round trip over {n} digits, K = {args.steps}: mean RMS error {errors.mean():.4f} "
          f"(on [0, 1] pixels)", file=sys.stderr)
    lat = latents.float().cpu().numpy()[:, 0]
    arrays = {"images": originals, "latents": lat.astype(np.float32), "reconstructions": back,
              "round_trip_error": errors, "index": np.asarray(args.index), "steps": np.int64(args.steps)}
    shown = images_to_uint8(np.clip(lat / 3.0, -1, 1))  # ±3σ of the latent as black..white
    return arrays, lambda path: _rows(path, [originals, shown, back], ["original", "latent", "decoded"])


def run_interpolate(args, inputs, loaded, device, amp, y, guidance, gen):
    with torch.inference_mode():
        if args.seeds is not None:
            ends = [torch.randn((1, *IMAGE_SHAPE), generator=torch.Generator(device=device).manual_seed(s),
                                device=device) for s in args.seeds]
        else:
            x0 = to_training_tensor(inputs["digits"], device)
            lat = invert(loaded.model, loaded.diffusion, x0, args.steps, labels_for(y, 2), guidance, amp)
            ends = [lat[:1], lat[1:]]
        path = interpolate(ends[0][0], ends[1][0], args.frames)
        frames = images_to_uint8(decode(loaded.model, loaded.diffusion, path, args.steps,
                                        labels_for(y, args.frames), guidance, amp))
    arrays = {"images": frames, "latents": path.float().cpu().numpy()[:, 0]}
    return arrays, lambda out: _rows(out, [frames], ["slerp path"])


def run_inpaint(args, inputs, loaded, device, amp, y, guidance, gen):
    known, original = inputs["known"], inputs["digits"][0]
    images = inpaint(loaded.model, loaded.diffusion, original, known, args.n, args.steps, args.resample,
                     gen, device, labels_for(y, args.n), guidance, amp, args.progress)
    masked = np.where(known, original, 64).astype(np.uint8)  # unknown pixels shown grey
    arrays = {"images": images, "original": original, "known": known, "index": np.int64(args.index[0])}
    return arrays, lambda out: _rows(out, [np.stack([original, masked]), images],
                                     ["original, masked", "completions"])


def _rows(path: Path, rows: list[np.ndarray], labels: list[str]) -> None:
    """One row of digits per entry of ``rows``, labelled on the left."""
    from nets.figures import image_grid, plt  # Agg, set there

    width = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(4, width * 0.5), 0.75 * len(rows) + 0.3),
                             squeeze=False)
    for ax, row, label in zip(axes[:, 0], rows, labels, strict=True):
        ax.imshow(image_grid(row, len(row)), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
