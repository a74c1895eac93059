"""Any dataset, measured (docs/results.md, issue 26): the sets it trains on, made from the shared
MNIST test split, and the scores of runs trained on them under one judge.

Usage:
    python experiments/dataset_study.py sets OUT --data-dir ../shared/data/mnist [--rows 10000]
    python experiments/dataset_study.py score OUT RUN [RUN ...] --reference RUN [--classifier PATH]
    python experiments/dataset_study.py colours OUT --data-dir ../shared/data/mnist

``sets`` writes into OUT (from the first ``--rows`` test digits; the first half is "train")
  * ``mnist-png/<digit>/<row>.png``: test[:5000] as PNG files in class subfolders, exactly the
    digits an IDX run with ``--split test --holdout 5000`` trains on;
  * ``tinted-bin/``: the test split as a labelled colour set at 32 × 32 in CIFAR-10's binary
    format (test[:5000] in data_batch_1..5.bin, test[5000:] in test_batch.bin): each digit padded
    by 2 pixels, on a dark blue background, its ink tinted by one of five colours chosen by its
    class (class c gets colour c mod 5), so that neither colour nor shape alone tells the class;
  * ``tinted-png/<class>/<row>.png``: the same images as a folder (class names ``0-red`` ...).
``score`` samples 1,000 images (seed 0, the default sampler) from each RUN and scores them with
one judge against the real images ``--reference`` (a run) never trained on, the floor beside;
OUT/<run name>.json holds each report and OUT/<run name>.png the first 100 images. ``colours``
asks whether the tinted set's judge sees colour: the unseen real half in its own colours, in the
next class's colour and in grey ink, against the other half (OUT/colour-check.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import nets
from nets.data import load_mnist
from nets.evaluation.scoring import RealData, ScoreOptions, make_judge, score_samples
from nets.figures import save_grid
from nets.files import write_json_atomic

COLOURS = {"red": (255, 70, 60), "green": (70, 230, 90), "blue": (80, 140, 255), "yellow": (250, 220, 60),
           "violet": (200, 90, 250)}
BACKGROUND = np.array([12, 14, 40], np.float64)


def tinted(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 28, 28) digits → (N, 32, 32, 3): padded, ink tinted by the class's colour over the background."""
    ink = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float64)[..., None] / 255.0
    colours = np.asarray(list(COLOURS.values()), np.float64)[labels % len(COLOURS)][:, None, None, :]
    return np.rint(BACKGROUND + ink * (colours - BACKGROUND)).astype(np.uint8)


def class_name(label: int) -> str:
    return f"{label}-{list(COLOURS)[label % len(COLOURS)]}"


def write_folder(out: Path, images: np.ndarray, labels: np.ndarray, names) -> None:
    for row, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / names(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{row:05d}.png")


def write_cifar_format(out: Path, images: np.ndarray, labels: np.ndarray, train_rows: int) -> None:
    """The first ``train_rows`` as five training batches, the rest as the test batch (label byte,
    then the R, G, B planes)."""
    out.mkdir(parents=True, exist_ok=True)

    def records(rows: slice) -> bytes:
        planes = images[rows].transpose(0, 3, 1, 2).reshape(len(images[rows]), -1)
        return np.concatenate([labels[rows, None].astype(np.uint8), planes], axis=1).tobytes()

    edges = np.linspace(0, train_rows, 6).astype(int)
    for k in range(5):
        (out / f"data_batch_{k + 1}.bin").write_bytes(records(slice(edges[k], edges[k + 1])))
    (out / "test_batch.bin").write_bytes(records(slice(train_rows, None)))


def make_sets(out: Path, data_dir: str, rows: int = 10_000) -> None:
    digits = load_mnist(data_dir, "test")
    images, labels, train = digits.images[:rows], digits.labels[:rows], rows // 2
    write_folder(out / "mnist-png", images[:train], labels[:train], str)
    colour = tinted(images, labels)
    write_cifar_format(out / "tinted-bin", colour, labels, train)
    write_folder(out / "tinted-png", colour, labels, class_name)
    write_json_atomic(out / "sets.json", {"rows": rows, "train_rows": train})
    print(f"wrote {out / 'mnist-png'}, {out / 'tinted-bin'} and {out / 'tinted-png'}", file=sys.stderr)


def score(out: Path, runs: list[str], reference: str, classifier: str | None, data_dir: str | None) -> None:
    ref = nets.load(reference)
    judge = make_judge(classifier=classifier, device=ref.device, real=RealData.of_model(ref.loaded, data_dir))
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        generated = nets.load(run).with_progress().sample(1000, seed=0)
        report = score_samples(judge, generated.images, generated.labels, ref.loaded, ScoreOptions(seed=0),
                               {**generated.settings, "run": run, "seconds": generated.seconds})
        name = Path(run).name
        write_json_atomic(out / f"{name}.json", report.to_json())
        save_grid(generated.images[:100], out / f"{name}.png", ncol=10)
        m, f = report.metrics, report.real_floor
        print(f"{name}: FD {m['frechet_distance']:.2f} (floor {f['frechet_distance']:.2f}), recognised "
              f"{100 * m['confident_fraction']:.1f} % (floor {100 * f['confident_fraction']:.1f} %), "
              f"{generated.seconds:.1f} s", file=sys.stderr)


def check_colours(out: Path, data_dir: str) -> None:
    """Does the tinted set's judge see colour? Its real unseen test half scored as it is, with each
    digit in the colour of the next class, and in grey ink, against the other half."""
    from nets.evaluation import metrics
    from nets.evaluation.protocol import image_set_metrics

    judge = make_judge(real=RealData("cifar10", str(out / "tinted-bin"), "test"))
    digits = load_mnist(data_dir, "test")
    made = json.loads((out / "sets.json").read_text())
    b = np.arange(made["train_rows"], made["rows"])[1::2]  # test_batch's odd rows; the even: reference
    reference = metrics.gaussian_statistics(judge.real_features[::2])
    ink = np.pad(digits.images[b], ((0, 0), (2, 2), (2, 2)))[..., None] / 255.0
    grey = np.rint(BACKGROUND + ink * (200 - BACKGROUND)).astype(np.uint8)
    sets = {"real, its own colours": tinted(digits.images[b], digits.labels[b]),
            "real, the next class's colour": tinted(digits.images[b], digits.labels[b] + 1),
            "real, grey ink": grey}
    report = {}
    for name, images in sets.items():
        m = image_set_metrics(images, judge.classifier, None, reference, judge.device, digits.labels[b])
        report[name] = {"count": len(b), "frechet_distance": m.frechet_distance,
                        "confident_fraction": m.confident_fraction, "label_agreement": m.label_agreement}
        print(f"{name}: FD {m.frechet_distance:.2f}, recognised {100 * m.confident_fraction:.1f} %, "
              f"classified as its digit {100 * m.label_agreement:.1f} %", file=sys.stderr)
    write_json_atomic(out / "colour-check.json", report)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sets")
    s.add_argument("out", type=Path)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--rows", type=int, default=10_000, help="the first N test digits (default: all)")
    c = sub.add_parser("score")
    c.add_argument("out", type=Path)
    c.add_argument("runs", nargs="+")
    c.add_argument("--reference", required=True, help="the run whose held-out real images are the reference")
    c.add_argument("--classifier", help="the judge's classifier (default: the dataset's own in the cache)")
    c.add_argument("--data-dir", help="where the reference run's named dataset is (default: its own)")
    k = sub.add_parser("colours", help="whether the tinted set's judge sees colour")
    k.add_argument("out", type=Path, help="the sets' folder")
    k.add_argument("--data-dir", required=True)
    args = p.parse_args(argv)
    if args.command == "sets":
        make_sets(args.out, args.data_dir, args.rows)
    elif args.command == "colours":
        check_colours(args.out, args.data_dir)
    else:
        score(args.out, args.runs, args.reference, args.classifier, args.data_dir)


if __name__ == "__main__":
    main()
