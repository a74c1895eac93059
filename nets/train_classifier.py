"""Train the evaluation classifier: ``python -m nets.train_classifier``.

``python -m nets.train_classifier --data-dir DIR --split SPLIT --out PATH`` trains the MNIST CNN of
``nets.evaluation.classifier`` on a seeded random part of the split, measures its accuracy on the
rest (held out), and saves it only if that accuracy reaches ``--min-accuracy`` (0.97). Its
features are the space of ``nets.evaluate``'s Fréchet distance.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nets import cli
from nets.evaluation.classifier import (
    CLASSIFIER_ENV,
    ClassifierError,
    ClassifierTraining,
    default_classifier_path,
    train_and_save,
)


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.train_classifier", description=__doc__.splitlines()[0])
    cli.add_data_dir(p)
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="MNIST split to train and hold out from")
    p.add_argument("--limit", type=cli.positive_int, help="use only the first N images")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where to save it (default: ${CLASSIFIER_ENV} or "
                        f"~/.cache/ddpm/classifier.pt)")
    p.add_argument("--holdout", type=cli.float_in(0, 1, high_open=True), default=0.2,
                   help="fraction of the images held out to measure accuracy")
    p.add_argument("--epochs", type=cli.positive_int, default=8, help="passes over the data")
    cli.add_seed(p, "seed of the split and the training")
    p.add_argument("--min-accuracy", type=cli.float_in(0, 1), default=0.97,
                   help="refuse to save a classifier below this held-out accuracy")
    cli.add_device(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = cli.device_from_flag(args.device)
    out = args.out or default_classifier_path()
    arrays = cli.mnist_or_exit(args.data_dir, args.split, args.limit)
    try:
        training = ClassifierTraining(args.holdout, args.epochs, args.seed, args.min_accuracy)
        train_and_save(arrays.images, arrays.labels, out, training, device,
                       source=f"MNIST {args.split}" + (f"[:{args.limit}]" if args.limit else ""))
    except ClassifierError as err:
        cli.fail(str(err), code=1)
    except OSError as err:
        cli.fail(f"--out: cannot write {out}: {err.strerror or err}")
    print(f"classifier saved to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
