"""Evaluate generated images: ``python -m nets.evaluate``.

    python -m nets.evaluate --samples FILE.npz --data-dir DIR --split SPLIT [--json PATH]
        [--classifier PATH] [--checkpoint RUN --nll-images N] [--dataset NAME_OR_FOLDER]
    python -m nets.evaluate --calibrate --data-dir DIR --split SPLIT [--json PATH]

The real images are those of the dataset the checkpoint records (else --dataset, default MNIST).
Metrics (docs/evaluation.md gives their calibrated ranges):
  * Fréchet distance between generated and real images in the 128-d penultimate features of
    the project's classifier of that dataset (``nets.train_classifier``): FID's formula in another
    space. An unlabelled dataset has no classifier, so no judge: it exits 2 saying so.
  * Share of images the classifier recognises with confidence ≥ 0.9, mean confidence,
    predicted-class histogram and its entropy (ln K when balanced: ln 10 ≈ 2.303 for MNIST).
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
from pathlib import Path

import torch

from nets import cli
from nets.checkpoint import CheckpointError, LoadedModel, load_model
from nets.data import MNIST_ERRORS, named_set
from nets.evaluation import classifier as clf
from nets.evaluation.nll import DEFAULT_NLL_IMAGES
from nets.evaluation.protocol import calibrate
from nets.evaluation.report import print_calibration, print_report
from nets.evaluation.samples import SamplesError, load_samples
from nets.evaluation.scoring import (
    ClassifierMissing,
    EvaluationReport,
    Judge,
    RealData,
    ScoreOptions,
    check_samples,
    make_judge,
    score_samples,
)
from nets.files import write_json_atomic
from nets.pipeline import Pipeline


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=Path, help="the .npz written by nets.sample (uint8 "
                   "'images' (N, H, W) or (N, H, W, 3))")
    p.add_argument("--calibrate", action="store_true",
                   help="instead of samples: the metrics of real, blurred, noisy and noise "
                        "images (the docs/evaluation.md table)")
    p.add_argument("--dataset", help="the real images to compare with: a dataset name or a labelled "
                   "folder (default: the one --checkpoint was trained on, else mnist)")
    cli.add_data_dir(p)
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="real images to compare with (of a named dataset; a folder is one split)")
    p.add_argument("--json", type=Path, help="write the results here (default: beside the "
                   "samples as <name>.eval.json; calibration: no file)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="the classifier file (default for MNIST: $DDPM_CLASSIFIER or "
                        "~/.cache/ddpm/classifier.pt; for another dataset one file per dataset in "
                        "~/.cache/ddpm/classifiers/); trained and saved there if missing")
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


def write_json(report: dict, path: Path) -> None:
    try:
        write_json_atomic(path, report)
    except OSError as err:
        cli.fail(f"--json: cannot write {path}: {err.strerror or err}")
    print(f"results written to {path}", file=sys.stderr)


def judge_or_exit(args, device: torch.device, loaded: LoadedModel | None) -> Judge:
    """The real split and the classifier (trained first if missing), or exit naming the flag."""
    if loaded is not None and args.dataset in (None, loaded.dataset.name):
        real = RealData.of_model(loaded, args.data_dir, args.split)
    else:
        real = RealData(args.dataset or "mnist", None if args.data_dir is None else str(args.data_dir),
                        args.split)
    try:
        return make_judge(classifier=args.classifier, train_missing=args.train_classifier, device=device,
                          real=real)
    except MNIST_ERRORS as err:
        cli.fail(str(err))
    except ClassifierMissing as err:
        cli.fail(f"--classifier: {err}")
    except clf.ClassifierTooWeak as err:
        cli.fail(f"classifier: {err}", code=1)
    except clf.ClassifierError as err:
        cli.fail(f"--classifier: {err}")
    except OSError as err:
        cli.fail(f"--classifier: cannot write {err.filename or 'the classifier'}: {err.strerror or err}")
    except ValueError as err:  # an unknown dataset, or one without labels
        cli.fail(f"--dataset: {err}")


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
    if samples is not None:  # before any real data is read
        check_samples_or_exit(samples, labels, loaded, args.dataset)
    judge = judge_or_exit(args, device, loaded)
    if args.calibrate:
        report = calibrate(judge.real.images, judge.real_features, judge.classifier, args.seed, device,
                           progress=lambda name: print(f"  {name}: done", file=sys.stderr, flush=True))
        report["real"]["split"] = args.split
        report["classifier"] = {"path": str(judge.classifier_path), **judge.classifier_info}
        print_calibration(report)
    else:
        scored = score_or_exit(args, judge, loaded, (samples, labels, {"path": str(args.samples), **meta}))
        print_report(scored)
        report = scored.to_json()
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = args.json
    if json_path is None and args.samples is not None:
        json_path = args.samples.with_name(f"{args.samples.stem}.eval.json")
    if json_path is not None:
        write_json(report, json_path)
    return 0


def check_samples_or_exit(samples, labels, loaded: LoadedModel | None, dataset: str | None) -> None:
    """Exit 2 naming --samples unless they have the shape (and labels the classes) of the
    checkpoint's model, else of the named --dataset (a folder's shape is known once it is read)."""
    if loaded is not None and dataset in (None, loaded.dataset.name):
        shape, classes = loaded.model.config.image_shape, max(len(loaded.dataset.class_names), 1)
    else:
        spec = named_set(dataset or "mnist")
        if spec is None:
            return
        shape, classes = spec.shape, len(spec.class_names)
    try:
        check_samples(samples, labels, shape, classes)
    except ValueError as err:
        cli.fail(f"--samples: {err}")


def score_or_exit(args, judge: Judge, loaded: LoadedModel | None, samples: tuple) -> EvaluationReport:
    """The samples' report: ``Pipeline.evaluate`` with --checkpoint (one code path with the
    Python API), else against the split alone; exit 2 naming the problem."""
    images, labels, about = samples
    info = judge.real.info
    try:
        check_samples(images, labels, info.shape, len(info.class_names))
    except ValueError as err:
        cli.fail(f"--samples: {err}; the real images are {info.describe()}")
    nll_images = DEFAULT_NLL_IMAGES if args.nll_images is None else args.nll_images
    options = ScoreOptions(args.seed, args.train_images, nll_images, args.nll_batch_size)
    try:
        if loaded is not None:
            return Pipeline(loaded).evaluate(images, labels, judge=judge, options=options, about=about)
        return score_samples(judge, images, labels, None, options, about)
    except MNIST_ERRORS as err:
        cli.fail(str(err))
    except ValueError as err:
        cli.fail(f"--checkpoint: its config's --limit/--holdout do not fit {info.title} {args.split}: {err}")


if __name__ == "__main__":
    raise SystemExit(main())
