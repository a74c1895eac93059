"""Any dataset, measured (docs/results.md, issue 26): the sets it trains on, made from the shared
MNIST test split, and the scores of runs trained on them under one judge.

Usage:
    python experiments/dataset_study.py sets OUT --data-dir ../shared/data/mnist
    python experiments/dataset_study.py score OUT RUN [RUN ...] --reference RUN [--classifier PATH]

``sets`` writes into OUT
  * ``mnist-png/<digit>/<row>.png``: test[:5000] as PNG files in class subfolders, exactly the
    digits an IDX run with ``--split test --holdout 5000`` trains on;
  * ``tinted-bin/``: the whole test split as a labelled colour set at 32 × 32 in CIFAR-10's binary
    format (test[:5000] in data_batch_1..5.bin, test[5000:] in test_batch.bin): each digit padded
    by 2 pixels, on a dark blue background, its ink tinted by one of five colours chosen by its
    class (class c gets colour c mod 5), so that neither colour nor shape alone tells the class;
  * ``tinted-png/<class>/<row>.png``: the same images as a folder (class names ``0-red`` ...).
``score`` samples 1,000 images (seed 0, the default sampler) from each RUN and scores them with
one judge against the real images ``--reference`` (a run) never trained on, the floor beside;
OUT/<run name>.json holds each report and OUT/<run name>.png the first 100 images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import nets
from nets.data import load_mnist
from nets.evaluation.scoring import RealData, ScoreOptions, make_judge, score_samples
from nets.figures import save_grid
from nets.files import write_json_atomic

TRAIN_ROWS = 5000
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


def write_cifar_format(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """test[:5000] as five training batches, test[5000:] as the test batch (label byte, R, G, B planes)."""
    out.mkdir(parents=True, exist_ok=True)

    def records(rows: slice) -> bytes:
        planes = images[rows].transpose(0, 3, 1, 2).reshape(len(images[rows]), -1)
        return np.concatenate([labels[rows, None].astype(np.uint8), planes], axis=1).tobytes()

    per_batch = TRAIN_ROWS // 5
    for k in range(5):
        (out / f"data_batch_{k + 1}.bin").write_bytes(records(slice(k * per_batch, (k + 1) * per_batch)))
    (out / "test_batch.bin").write_bytes(records(slice(TRAIN_ROWS, None)))


def make_sets(out: Path, data_dir: str) -> None:
    digits = load_mnist(data_dir, "test")
    write_folder(out / "mnist-png", digits.images[:TRAIN_ROWS], digits.labels[:TRAIN_ROWS], str)
    colour = tinted(digits.images, digits.labels)
    write_cifar_format(out / "tinted-bin", colour, digits.labels)
    write_folder(out / "tinted-png", colour, digits.labels, class_name)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sets")
    s.add_argument("out", type=Path)
    s.add_argument("--data-dir", required=True)
    c = sub.add_parser("score")
    c.add_argument("out", type=Path)
    c.add_argument("runs", nargs="+")
    c.add_argument("--reference", required=True, help="the run whose held-out real images are the reference")
    c.add_argument("--classifier", help="the judge's classifier (default: the dataset's own in the cache)")
    c.add_argument("--data-dir", help="where the reference run's named dataset is (default: its own)")
    args = p.parse_args(argv)
    if args.command == "sets":
        make_sets(args.out, args.data_dir)
    else:
        score(args.out, args.runs, args.reference, args.classifier, args.data_dir)


if __name__ == "__main__":
    main()
