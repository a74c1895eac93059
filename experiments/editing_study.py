"""The measured numbers of docs/editing.md: round-trip error of DDIM inversion against K, and how
often an inpainted digit is still classified as the original's class. Driven through the Python
API (``nets.load`` → ``Pipeline.invert`` / ``decode`` / ``inpaint``), as a user would.

Usage:
    python experiments/editing_study.py RUN_DIR OUT.json --data-dir DIR --classifier PATH
        [--first 5000] [--digits 50] [--n 4] [--steps 50] [--resample 3] [--ks 10,20,50,100]

Digits are MNIST test[first:first+digits], ones the model never trained on (RUN_DIR trained on
test[:5000]). Round trip: K = --ks on those digits, RMS error on [0, 1] pixels. Inpainting: for
each mask, --n completions of each digit (digits × n ≥ 200), classified by the evaluation
classifier; the masked input alone (unknown pixels black) is classified as a baseline.
The results of docs/editing.md are experiments/results/editing_study.json.
"""

import argparse
import sys

import numpy as np

import nets
from nets.data import load_mnist
from nets.editing.inversion import round_trip_error
from nets.evaluation.classifier import classify, load_classifier
from nets.files import write_json_atomic


def round_trips(pipe, digits, ks) -> dict:
    """K → the RMS round-trip error's mean, median and max over ``digits``."""
    out = {}
    for K in ks:
        err = round_trip_error(digits, pipe.decode(pipe.invert(digits, steps=K), steps=K))
        out[K] = {"mean": float(err.mean()), "median": float(np.median(err)), "max": float(err.max())}
        print(f"round trip K={K}: mean RMS {err.mean():.4f}", file=sys.stderr, flush=True)
    return out


def inpainting(pipe, digits, labels, classifier, mask, settings) -> dict:
    """Completions classified as the original's class, beside the masked input alone."""
    known = nets.named_mask(mask)
    hits, base_hits = [], []
    for i, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        out = pipe.inpaint(digit, known, settings=settings, seed=i)
        hits += list(classify(classifier, out).probs.argmax(1) == label)
        masked = np.where(known, digit, 0).astype(np.uint8)[None]
        base_hits.append(bool(classify(classifier, masked).probs.argmax(1)[0] == label))
    print(f"inpaint {mask}: {np.mean(hits):.3f} of {len(hits)} (masked input alone "
          f"{np.mean(base_hits):.3f})", file=sys.stderr, flush=True)
    return {"completions": len(hits), "classified_as_original": float(np.mean(hits)),
            "masked_input_classified_as_original": float(np.mean(base_hits))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--first", type=int, default=5000)
    p.add_argument("--digits", type=int, default=50)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resample", type=int, default=3)
    p.add_argument("--masks", default="left,top")
    p.add_argument("--ks", default="10,20,50,100", help="inversion steps K of the round trips")
    args = p.parse_args()
    pipe = nets.load(args.run_dir, device="cpu", precision="fp32")
    real = load_mnist(args.data_dir, "test")
    digits = np.asarray(real.images[args.first:args.first + args.digits])
    labels = np.asarray(real.labels[args.first:args.first + args.digits])
    classifier, _ = load_classifier(args.classifier)
    settings = nets.InpaintSettings(args.n, args.steps, args.resample)
    result = {"digits": f"MNIST test[{args.first}:{args.first + args.digits}]",
              "round_trip": round_trips(pipe, digits, [int(k) for k in args.ks.split(",")]),
              "inpaint": {mask: inpainting(pipe, digits, labels, classifier, mask, settings)
                          for mask in args.masks.split(",")},
              "steps": args.steps, "resample": args.resample, "n": args.n}
    write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
