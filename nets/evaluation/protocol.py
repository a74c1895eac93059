"""The evaluation protocol: which real images a model trained on and which it never saw, the
metrics of one image set against real digits, the real-vs-real floor at the same n, and the
calibration sets that bracket the metrics' range (docs/evaluation.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nets.data import ImageSet, training_and_held_out
from nets.evaluation import classifier as clf
from nets.evaluation import metrics
from nets.evaluation.nll import DEFAULT_NLL_IMAGES, nll_calibration

CONFIDENCE = 0.9
BASELINE_IMAGES = 2000  # held-out real images whose nearest-neighbour distance is the baseline


@dataclass
class Reference:
    """The memorisation reference: the model's training images and the real baseline."""

    train_images: np.ndarray  # (M, H, W[, 3]) uint8: the diffusion model's training images
    baseline_nn: np.ndarray  # (K,) NN distances of real images the model never saw
    baseline_kind: str  # "held-out" or "leave-one-out"


@dataclass
class ImageSetMetrics:
    count: int
    frechet_distance: float
    confident_fraction: float
    mean_confidence: float
    class_histogram: list[int]
    class_entropy: float
    nn_median: float | None
    memorisation_ratio: float | None
    label_agreement: float | None = None  # share classified as the requested class
    label_agreement_per_digit: list[float] | None = None  # the same, for each requested class


def image_set_metrics(images: np.ndarray, model: clf.MnistClassifier, ref: Reference | None,
                      real_stats: metrics.GaussianStats, device: torch.device,
                      labels: np.ndarray | None = None) -> ImageSetMetrics:
    out = clf.classify(model, images, device=device)
    agreement = per_digit = None
    if labels is not None:
        hit = out.probs.argmax(1) == labels
        agreement = float(np.mean(hit))
        per_digit = [float(np.mean(hit[labels == d])) if np.any(labels == d) else float("nan")
                     for d in range(model.fc2.out_features)]
    fd = metrics.frechet_distance_of(metrics.gaussian_statistics(out.features), real_stats)
    cls = metrics.class_statistics(out.probs, CONFIDENCE)
    nn_median = ratio = None
    if ref is not None:
        nn_median = float(np.median(metrics.nearest_neighbour_distances(images, ref.train_images)))
        ratio = nn_median / float(np.median(ref.baseline_nn))
    return ImageSetMetrics(len(images), fd, cls.confident_fraction, cls.mean_confidence,
                           cls.histogram, cls.entropy, nn_median, ratio, agreement, per_digit)


def make_reference(train_images: np.ndarray, held_out: np.ndarray, seed: int) -> Reference:
    """The memorisation baseline: NN distances of up to 2000 held-out real images to the
    training images, or (none held out) leave-one-out distances inside the training images."""
    rng = np.random.default_rng(seed)
    if len(held_out):
        pick = rng.choice(len(held_out), min(BASELINE_IMAGES, len(held_out)), replace=False)
        nn = metrics.nearest_neighbour_distances(held_out[np.sort(pick)], train_images)
        kind = "held-out"
    else:  # leave-one-out: each picked image against all the other training images
        pick = np.sort(rng.choice(len(train_images), min(BASELINE_IMAGES, len(train_images)),
                                  replace=False))
        rest = np.setdiff1d(np.arange(len(train_images)), pick)
        nn = metrics.nearest_neighbour_distances(train_images[pick], train_images[pick],
                                                 exclude_self=True)
        if len(rest):
            nn = np.minimum(nn, metrics.nearest_neighbour_distances(train_images[pick],
                                                                    train_images[rest]))
        kind = "leave-one-out"
    return Reference(train_images, nn, kind)


def training_images_of(real: np.ndarray, split: str, load_split: Callable[[str], np.ndarray],
                       checkpoint_cfg: dict | None, train_images: int | None, title: str = "MNIST"
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(images the diffusion model trained on, real images it never saw, a description).

    With a checkpoint its config says (split, --limit, --holdout: `data.training_and_held_out`);
    otherwise ``--train-images N`` says the first N of the split; otherwise the whole split is
    taken as the training set. ``load_split(name)`` gives the images of another split, when the
    checkpoint trained on one.
    """
    if checkpoint_cfg is not None:
        tsplit, limit = checkpoint_cfg.get("split", split), checkpoint_cfg.get("limit")
        holdout = int(checkpoint_cfg.get("holdout", 0))
        source = real if tsplit == split else load_split(tsplit)
        rows, held = training_and_held_out(len(source), None if limit is None else int(limit), holdout)
        described = f"{title} {tsplit}[:{rows.stop}] (from the checkpoint's config)"
        return source[rows], (source[held] if tsplit == split else real), described
    if train_images is not None:
        n = min(train_images, len(real))
        return real[:n], real[n:], f"{title} {split}[:{n}] (--train-images)"
    return real, real[:0], f"all of {title} {split} (assumed; pass --checkpoint or --train-images)"


@dataclass(frozen=True)
class Judge:
    """What every score is measured with: the real images (``split`` of a dataset, ``source``
    says which and how they were read), the classifier and its 128-d features of them
    (``nets.evaluation.scoring.make_judge`` builds it)."""

    split: str
    data_dir: str | None
    real: ImageSet
    classifier: clf.MnistClassifier
    classifier_path: Path
    classifier_info: dict
    real_features: np.ndarray  # (N, 128) of real.images
    device: torch.device
    source: object = None  # nets.evaluation.scoring.RealData: how ``real`` was read

    def images_of(self, split: str) -> np.ndarray:
        """Another split's images (a model trained on the other one); data errors as raised."""
        if split == self.split or self.real.info.is_folder:
            return self.real.images
        return replace(self.source, split=split).load().images


@dataclass(frozen=True)
class RealSet:
    """The real digits samples are compared with, and the classifier's features of them."""

    images: np.ndarray  # (N, H, W[, 3]) uint8
    features: np.ndarray  # (N, 128)


@dataclass(frozen=True)
class TrainingSplit:
    """The images the diffusion model trained on, and real ones it never saw (its baseline)."""

    train: np.ndarray
    held_out: np.ndarray


def real_floor(judge: Judge, real: RealSet, n: int, ref: Reference, seed: int) -> dict:
    """The metrics of real digits at the samples' n: a random real subset of n (at most half)
    against the other real images, the floor every generated set is compared with."""
    rng = np.random.default_rng(seed)
    n_floor = min(n, len(real.images) // 2)
    pick = rng.permutation(len(real.images))
    floor_stats = metrics.gaussian_statistics(real.features[pick[n_floor:]])
    floor_out = clf.classify(judge.classifier, real.images[pick[:n_floor]], device=judge.device)
    floor_cls = metrics.class_statistics(floor_out.probs, CONFIDENCE)
    return {
        "count": n_floor,
        "frechet_distance": metrics.frechet_distance_of(
            metrics.gaussian_statistics(floor_out.features), floor_stats),
        "confident_fraction": floor_cls.confident_fraction,
        "mean_confidence": floor_cls.mean_confidence,
        "class_entropy": floor_cls.entropy,
        "nn_median": float(np.median(ref.baseline_nn)),
    }


def evaluate_samples(judge: Judge, samples: np.ndarray, labels: np.ndarray | None, real: RealSet,
                     split: TrainingSplit, seed: int) -> dict:
    """The samples' metrics against the real images, the floor beside them, memorisation
    against ``split.train`` with ``split.held_out`` real images as its baseline."""
    ref = make_reference(split.train, split.held_out, seed)
    t0 = time.perf_counter()
    gen = image_set_metrics(samples, judge.classifier, ref, metrics.gaussian_statistics(real.features),
                            judge.device, labels)
    eval_seconds = time.perf_counter() - t0
    return {
        "metrics": asdict(gen),
        "real_floor": real_floor(judge, real, len(samples), ref, seed),
        "memorisation": {"training_count": len(split.train), "baseline": ref.baseline_kind,
                         "baseline_count": len(ref.baseline_nn)},
        "max_class_entropy": math.log(judge.classifier.fc2.out_features),
        "eval_images_per_second": len(samples) / max(eval_seconds, 1e-9),
    }


def calibration_sets(held_out: np.ndarray, train: np.ndarray, seed: int
                     ) -> list[tuple[str, np.ndarray]]:
    """Image sets whose metrics bracket the range: real, blurred, noisy, noise, copies."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    unit = held_out.astype(np.float64) / 255.0

    def to_u8(x):
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    def blur(sigma):
        spatial = (0, sigma, sigma) + (0,) * (unit.ndim - 3)  # never across images or colours
        return to_u8(gaussian_filter(unit, sigma=spatial))

    def noisy(sigma):
        return to_u8(unit + sigma * rng.standard_normal(unit.shape))

    n = len(held_out)
    gauss = rng.standard_normal(held_out.shape)  # x_T of an untrained sampler, in [-1, 1]
    return [
        (f"real held-out (n={n})", held_out),
        ("real held-out (n=1000)", held_out[:1000]),
        ("real held-out (n=200)", held_out[:200]),
        ("blur σ=1 px", blur(1.0)),
        ("blur σ=2 px", blur(2.0)),
        ("noise σ=0.1", noisy(0.1)),
        ("noise σ=0.3", noisy(0.3)),
        ("pure noise uniform", rng.integers(0, 256, held_out.shape, dtype=np.uint8)),
        ("pure noise N(0,1) in [-1,1]", to_u8(np.clip((gauss + 1) / 2, 0, 1))),
        ("copies of training images", train[:1000]),
    ]


def calibrate(real_images: np.ndarray, real_features: np.ndarray, model: clf.MnistClassifier,
              seed: int, device: torch.device, progress: Callable[[str], None] = lambda _: None) -> dict:
    """The metrics of each calibration set: the real images split into random halves, A (the
    reference and 'training set') and B (held out, degraded into the sets)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real_images))
    half = len(order) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:])
    stats_a = metrics.gaussian_statistics(real_features[a])
    ref = make_reference(real_images[a], real_images[b], seed)
    rows = []
    for name, images in calibration_sets(real_images[b], real_images[a], seed):
        m = image_set_metrics(images, model, ref, stats_a, device)
        rows.append({"set": name, **asdict(m)})
        progress(name)
    nll = nll_calibration(real_images[b][:DEFAULT_NLL_IMAGES], seed)
    return {"calibration": rows, "real": {"count": len(real_images), "reference_half": half},
            "baseline_nn_median": float(np.median(ref.baseline_nn)),
            "max_class_entropy": math.log(model.fc2.out_features), "nll_calibration": nll}
