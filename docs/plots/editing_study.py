"""The measured numbers of docs/editing.md: round-trip error of DDIM inversion against K, and how
often an inpainted digit is still classified as the original's class.

Usage:
    python docs/plots/editing_study.py RUN_DIR OUT.json --data-dir DIR --classifier PATH
        [--first 5000] [--digits 50] [--n 4] [--steps 50] [--resample 3]

Digits are MNIST test[first:first+digits], ones the model never trained on (RUN_DIR trained on
test[:5000]). Round trip: K = 10, 20, 50, 100 on those digits, RMS error on [0, 1] pixels.
Inpainting: for each mask, --n completions of each digit (digits × n ≥ 200), classified by the
evaluation classifier; the masked input alone (unknown pixels black) is classified as a baseline.
"""

import argparse
import json
import sys

import numpy as np
import torch

from nets.checkpoint import load_model
from nets.data import load_mnist
from nets.editing.inpaint import inpaint
from nets.editing.inversion import decode, invert, round_trip_error
from nets.editing.masks import named_mask
from nets.evaluation.classifier import classify, load_classifier
from nets.pixels import images_to_uint8, to_training_tensor


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
    args = p.parse_args()
    device = torch.device("cpu")
    loaded = load_model(args.run_dir, "ema", device)
    real = load_mnist(args.data_dir, "test")
    digits = np.asarray(real.images[args.first:args.first + args.digits])
    labels = np.asarray(real.labels[args.first:args.first + args.digits])
    clf, _ = load_classifier(args.classifier, device)
    result = {"digits": f"MNIST test[{args.first}:{args.first + args.digits}]", "round_trip": {},
              "inpaint": {}, "steps": args.steps, "resample": args.resample, "n": args.n}
    x0 = to_training_tensor(digits, device)
    for K in (10, 20, 50, 100):
        with torch.inference_mode():
            back = images_to_uint8(decode(loaded.model, loaded.diffusion,
                                          invert(loaded.model, loaded.diffusion, x0, K), K))
        err = round_trip_error(digits, back)
        result["round_trip"][K] = {"mean": float(err.mean()), "median": float(np.median(err)),
                                   "max": float(err.max())}
        print(f"round trip K={K}: mean RMS {err.mean():.4f}", file=sys.stderr, flush=True)
    for mask in args.masks.split(","):
        known = named_mask(mask)
        hits, base_hits = [], []
        gen = torch.Generator().manual_seed(0)
        for digit, label in zip(digits, labels, strict=True):
            out = inpaint(loaded.model, loaded.diffusion, digit, known, args.n, args.steps, args.resample,
                          gen, device)
            hits += list(classify(clf, out).probs.argmax(1) == label)
            masked = np.where(known, digit, 0).astype(np.uint8)[None]
            base_hits.append(bool(classify(clf, masked).probs.argmax(1)[0] == label))
        result["inpaint"][mask] = {"completions": len(hits), "classified_as_original": float(np.mean(hits)),
                                   "masked_input_classified_as_original": float(np.mean(base_hits))}
        print(f"inpaint {mask}: {np.mean(hits):.3f} of {len(hits)} (masked input alone "
              f"{np.mean(base_hits):.3f})", file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
