"""Train the evaluation classifier: ``python -m nets.train_classifier``.

``python -m nets.train_classifier --data-dir DIR --split SPLIT --out PATH`` trains the CNN of
``nets.evaluation.classifier`` on a seeded random part of the split (of MNIST, or ``--dataset``:
any labelled dataset), measures its accuracy on the rest (held out), and saves it only if that
accuracy reaches ``--min-accuracy`` (0.97 for MNIST, 0.5 for another dataset). Its features are
the space of ``nets.evaluate``'s Fréchet distance.
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
    training_for,
)


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.train_classifier", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", help="a dataset name or a labelled folder of images")
    cli.add_data_dir(p)
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="the split to train and hold out from (of a named dataset)")
    p.add_argument("--limit", type=cli.positive_int, help="use only the first N images")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where to save it (default for MNIST: ${CLASSIFIER_ENV} or "
                        f"~/.cache/ddpm/classifier.pt; another dataset: the file nets.evaluate looks for)")
    p.add_argument("--holdout", type=cli.float_in(0, 1, high_open=True), default=0.2,
                   help="fraction of the images held out to measure accuracy")
    p.add_argument("--epochs", type=cli.positive_int, default=8, help="passes over the data")
    cli.add_seed(p, "seed of the split and the training")
    p.add_argument("--min-accuracy", type=cli.float_in(0, 1),
                   help="refuse to save a classifier below this held-out accuracy (default 0.97 "
                   "for MNIST, 0.5 for another dataset)")
    cli.add_device(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = cli.device_from_flag(args.device)
    real = cli.dataset_or_exit(args.dataset, args.data_dir, args.split)
    if not real.info.labelled:
        cli.fail(f"--dataset: {real.info.title} is unlabelled; a classifier needs class folders")
    out = args.out or default_classifier_path(real)
    images, labels = real.images[:args.limit], real.labels[:args.limit]
    default = training_for(real.info)
    try:
        least = default.min_accuracy if args.min_accuracy is None else args.min_accuracy
        training = ClassifierTraining(args.holdout, args.epochs, args.seed, least, default.num_classes)
        train_and_save(images, labels, out, training, device,
                       source=f"{real.info.title} {args.split}" + (f"[:{args.limit}]" if args.limit else ""))
    except ClassifierError as err:
        cli.fail(str(err), code=1)
    except OSError as err:
        cli.fail(f"--out: cannot write {out}: {err.strerror or err}")
    print(f"classifier saved to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
