"""Evaluate generated digits: ``python -m nets.evaluate``.

    python -m nets.evaluate --samples FILE.npz --data-dir DIR --split SPLIT [--json PATH]
        [--classifier PATH] [--checkpoint RUN --nll-images N]
    python -m nets.evaluate --calibrate --data-dir DIR --split SPLIT [--json PATH]

Metrics (docs/evaluation.md gives their calibrated ranges):
  * Fréchet distance between generated and real images in the 128-d penultimate features of
    the project's MNIST classifier (``nets.classifier``): FID's formula in another space.
  * Share of digits the classifier recognises with confidence ≥ 0.9, mean confidence,
    predicted-class histogram and its entropy (ln 10 ≈ 2.303 when balanced).
  * Memorisation: median pixel-L2 distance ([0, 1] pixels) from each sample to its nearest
    training image, against the same for real images the model never saw; the ratio.
  * With ``--checkpoint``: NLL in bits/dim of real images under the variational bound of Ho
    et al. (2020) eq. 5 (diffusion_core's prior, per-step KL and decoder terms), T model calls
    per batch, on ``--nll-images`` images (default 16).

A missing classifier is trained on the given split and saved (about a minute on a CPU), unless
``--no-train-classifier``, which exits 2 with the command that trains it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from nets import cli
from nets.checkpoint import CheckpointError, LoadedModel, load_model
from nets.files import write_json_atomic
from nets.evaluation import classifier as clf
from nets.evaluation.nll import DEFAULT_NLL_IMAGES, nll_bits_per_dim
from nets.evaluation.protocol import calibrate, evaluate_samples, training_images_of
from nets.evaluation.report import print_calibration, print_report
from nets.evaluation.samples import SamplesError, load_samples


def load_or_train_classifier(path: Path, real_images: np.ndarray, real_labels: np.ndarray,
                             split: str, data_dir: str | None, train: bool,
                             device: torch.device) -> tuple[clf.MnistClassifier, dict]:
    if not path.exists():
        command = (f"python -m nets.classifier --split {split} --out {path}"
                   + (f" --data-dir {data_dir}" if data_dir else ""))
        if not train:
            cli.fail(f"--classifier: {path} not found; train it with: {command}")
        print(f"classifier not found at {path}: training it on MNIST {split} "
              f"({len(real_images)} images; the same as `{command}`)", file=sys.stderr)
        try:
            clf.train_and_save(real_images, real_labels, path, device=device,
                               source=f"MNIST {split}")
        except clf.ClassifierError as err:
            cli.fail(f"classifier: {err}", code=1)
        except OSError as err:
            cli.fail(f"--classifier: cannot write {path}: {err.strerror or err}")
    try:
        return clf.load_classifier(path, device)
    except clf.ClassifierError as err:
        cli.fail(f"--classifier: {err}")


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=Path, help="the .npz written by nets.sample (uint8 "
                   "'images' (N, 28, 28))")
    p.add_argument("--calibrate", action="store_true",
                   help="instead of samples: the metrics of real, blurred, noisy and noise "
                        "images (the docs/evaluation.md table)")
    cli.add_data_dir(p)
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="real images to compare with")
    p.add_argument("--json", type=Path, help="write the results here (default: beside the "
                   "samples as <name>.eval.json; calibration: no file)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="the classifier file (default: $DDPM_CLASSIFIER or "
                        "~/.cache/ddpm/classifier.pt); trained and saved there if missing")
    p.add_argument("--no-train-classifier", dest="train_classifier", action="store_false",
                   help="if the classifier is missing, exit 2 with the command to train it")
    p.add_argument("--checkpoint", type=cli.existing_path,
                   help="the model's run directory or checkpoint: its training images (for "
                        "memorisation) and the NLL")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="with --checkpoint: weights for the NLL")
    p.add_argument("--nll-images", type=cli.int_at_least(0),
                   help=f"with --checkpoint: real images for the NLL (default "
                        f"{DEFAULT_NLL_IMAGES}; 0 skips it; T model calls per batch)")
    p.add_argument("--nll-batch-size", type=cli.positive_int, default=64,
                   help="images per NLL batch")
    p.add_argument("--train-images", type=cli.positive_int,
                   help="without --checkpoint: the model trained on the first N images of "
                        "--split (default: all of it)")
    cli.add_seed(p, "seed of subsets and NLL noise")
    cli.add_device(p)
    return p


def check_flag_combinations(parser: cli.Parser, args) -> None:
    if args.calibrate == (args.samples is not None):
        parser.error("give exactly one of --samples FILE.npz and --calibrate")
    if args.nll_images is not None and args.checkpoint is None:
        parser.error("argument --nll-images: needs --checkpoint")
    if args.calibrate and args.checkpoint is not None:
        parser.error("argument --checkpoint: not used with --calibrate")


def samples_report(args, samples, meta, labels, real, real_features, model,
                   loaded: LoadedModel | None, device: torch.device) -> dict:
    """The samples against real digits, memorisation against the model's training images and,
    with a checkpoint, the NLL of real images."""
    try:
        train, held_out, described = training_images_of(
            real.images, args.split, lambda split: cli.mnist_or_exit(args.data_dir, split).images,
            loaded.config if loaded else None, args.train_images)
    except ValueError as err:
        cli.fail(f"--checkpoint: its config's --limit/--holdout do not fit MNIST {args.split}: {err}")
    reference, features, which = real.images, real_features, f"all of MNIST {args.split}"
    if loaded is not None and loaded.config.get("split", args.split) == args.split and len(held_out) >= 2:
        # the protocol: samples against exactly the real digits the model never saw
        reference, which = held_out, f"the {len(held_out)} images of MNIST {args.split} it never trained on"
        features = clf.classify(model, held_out, device=device).features
    report = evaluate_samples(samples, labels, reference, features, model, train, held_out,
                              args.seed, device)
    report = {"samples": {"path": str(args.samples), **meta},
              "real": {"split": args.split, "count": len(reference), "reference": which}, **report}
    report["memorisation"]["training_images"] = described
    n_nll = DEFAULT_NLL_IMAGES if args.nll_images is None else args.nll_images
    if loaded is not None and n_nll:
        report["nll"] = nll_report(args, loaded, train, held_out, n_nll, device)
    return report


def nll_report(args, loaded: LoadedModel, train: np.ndarray, held_out: np.ndarray, n_nll: int,
               device: torch.device) -> dict:
    """Bits/dim of held-out real images (training images when too few are held out)."""
    source, which = (held_out, "held-out") if len(held_out) >= n_nll else (train, "training")
    n_nll = min(n_nll, len(source))
    print(f"NLL on {n_nll} {which} images: {loaded.diffusion.num_timesteps} model calls "
          f"per batch of {args.nll_batch_size}", file=sys.stderr)
    nll = nll_bits_per_dim(loaded.model, loaded.diffusion, source[:n_nll], args.nll_batch_size,
                           args.seed, device, progress=True)
    return {**asdict(nll), "which": which, "checkpoint": str(loaded.path),
            "weights": args.weights, "timesteps": loaded.diffusion.num_timesteps}


def write_json(report: dict, path: Path) -> None:
    try:
        write_json_atomic(path, report)
    except OSError as err:
        cli.fail(f"--json: cannot write {path}: {err.strerror or err}")
    print(f"results written to {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flag_combinations(parser, args)
    t_start = time.perf_counter()
    device = cli.device_from_flag(args.device)
    samples, meta, labels = None, {}, None
    if args.samples is not None:
        try:
            samples, meta, labels = load_samples(args.samples)
        except SamplesError as err:
            cli.fail(f"--samples: {err}")
    loaded = None
    if args.checkpoint is not None:
        try:
            loaded = load_model(args.checkpoint, args.weights, device)
        except CheckpointError as err:
            cli.fail(f"--checkpoint: {err}")
    real = cli.mnist_or_exit(args.data_dir, args.split)
    classifier_path = args.classifier or clf.default_classifier_path()
    model, info = load_or_train_classifier(classifier_path, real.images, real.labels,
                                           args.split, args.data_dir, args.train_classifier,
                                           device)
    real_features = clf.classify(model, real.images, device=device).features
    if args.calibrate:
        report = calibrate(real.images, real_features, model, args.seed, device,
                           progress=lambda name: print(f"  {name}: done", file=sys.stderr, flush=True))
        report["real"]["split"] = args.split
    else:
        report = samples_report(args, samples, meta, labels, real, real_features, model, loaded,
                                device)
    report["classifier"] = {"path": str(classifier_path), **info}
    (print_calibration if args.calibrate else print_report)(report)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = args.json
    if json_path is None and args.samples is not None:
        json_path = args.samples.with_name(f"{args.samples.stem}.eval.json")
    if json_path is not None:
        write_json(report, json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
