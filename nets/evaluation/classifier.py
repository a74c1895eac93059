"""The evaluation classifier: a small CNN trained by the project on the data at hand (MNIST's
digits by default; any labelled dataset's images, of its channels, size and classes).

:func:`train_and_save` (the command ``python -m nets.train_classifier``) trains it on a seeded random
part of the images, measures its accuracy on the rest (held out), and saves it atomically
(``nets.checkpoint.save_checkpoint``) only if that accuracy reaches ``min_accuracy`` (0.97).
The file is a dict of tensors and plain values, read back with ``torch.load(weights_only=True)``.

Its penultimate layer (128 ReLU features) is the feature space of the Fréchet distance in
``nets.evaluate``; its softmax gives the confidence and class-histogram metrics. Inputs are
uint8 images in the pixel layout, (N, H, W) or (N, H, W, 3), 0 = black, 255 = white, scaled to
[0, 1] inside.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nets.checkpoint import CheckpointError, check_format_version, safe_load, save_checkpoint
from nets.data import MNIST_INFO, DatasetInfo, ImageSet, user_cache_dir
from nets.pixels import IMAGE_SIZE, NUM_CLASSES
from nets.progress import Progress

KIND = "mnist-classifier"
PROGRESS_EVERY = 25  # training steps between progress lines
FEATURE_DIM = 128
CLASSIFIER_ENV = "DDPM_CLASSIFIER"
OTHER_MIN_ACCURACY = 0.5  # held-out accuracy a judge of a dataset other than MNIST must reach


class ClassifierError(ValueError):
    """A classifier file that cannot be used: missing, unreadable, or not this classifier."""


class ClassifierTooWeak(ClassifierError):
    """A freshly trained classifier below the required held-out accuracy (nothing saved)."""


def default_classifier_path(real: ImageSet | None = None) -> Path:
    """MNIST's (``real`` None or MNIST): $DDPM_CLASSIFIER, else $XDG_CACHE_HOME/ddpm/classifier.pt,
    else ~/.cache/ddpm/classifier.pt. Another dataset's: classifiers/<name>-<C>x<H>-<hash>.pt in
    the same cache, the hash that of its real images (a changed folder gets a new classifier)."""
    if real is None or real.info.name == "mnist" and real.info.shape == MNIST_INFO.shape:
        explicit = os.environ.get(CLASSIFIER_ENV)
        if explicit:
            return Path(explicit).expanduser()
        return user_cache_dir() / "classifier.pt"
    c, h, _ = real.info.shape
    digest = hashlib.sha1(np.ascontiguousarray(real.images).data).hexdigest()[:12]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(real.info.name).name) or "folder"
    return user_cache_dir() / "classifiers" / f"{name}-{c}x{h}-{digest}.pt"


def training_for(info: DatasetInfo) -> ClassifierTraining:
    """How the judge of ``info`` is trained: MNIST must reach 97 % held-out accuracy (its table in
    docs/evaluation.md); any other dataset 50 %, its accuracy stated in every report."""
    return ClassifierTraining(min_accuracy=0.97 if info.name == "mnist" else OTHER_MIN_ACCURACY,
                              num_classes=len(info.class_names))


def check_fits(model: MnistClassifier, info: DatasetInfo, path: Path) -> None:
    """ClassifierError unless the classifier at ``path`` takes ``info``'s images and classes."""
    c, h, _ = info.shape
    want = {"in_channels": c, "image_size": h, "num_classes": len(info.class_names)}
    if model.shape != want:
        raise ClassifierError(f"{path} is a classifier of {model.shape['in_channels']}×"
                              f"{model.shape['image_size']}² images and {model.shape['num_classes']} "
                              f"classes, not of {info.describe()}")


class MnistClassifier(nn.Module):
    """conv(16) → pool → conv(32) → pool → fc(128) → fc(K); ``features`` is the fc(128) output.
    MNIST's by default; ``in_channels``, ``image_size`` (a multiple of 4) and ``num_classes``
    fit it to another dataset."""

    def __init__(self, in_channels: int = 1, image_size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.shape = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * (image_size // 4) ** 2, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] → (B, 128) non-negative penultimate features."""
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 16, H/2, W/2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)  # (B, 32, H/4, W/4)
        return F.relu(self.fc1(h.flatten(1)))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))  # (B, K) logits


def to_unit_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → float32 (N, C, H, W) in [0, 1]."""
    x = torch.tensor(np.asarray(images, dtype=np.uint8), device=device)  # a copy: inputs may be read-only
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float() / 255.0


@dataclass
class ClassifierOutputs:
    features: np.ndarray  # (N, 128) float64
    probs: np.ndarray  # (N, K) float64 softmax


@torch.inference_mode()
def classify(model: MnistClassifier, images: np.ndarray, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> ClassifierOutputs:
    """Features and class probabilities of uint8 images in the pixel layout, in batches."""
    model.eval()
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        x = to_unit_tensor(images[start:start + batch_size], device)
        h = model.features(x)
        feats.append(h.double().cpu().numpy())
        probs.append(torch.softmax(model.fc2(h).double(), dim=1).cpu().numpy())
    if not feats:
        return ClassifierOutputs(np.zeros((0, FEATURE_DIM)), np.zeros((0, model.fc2.out_features)))
    return ClassifierOutputs(np.concatenate(feats), np.concatenate(probs))


def holdout_split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) of a seeded random split of n images."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = max(1, round(n * holdout_fraction))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def augment(x: torch.Tensor, gen: torch.Generator, shift: float = 2.0, degrees: float = 10.0
            ) -> torch.Tensor:
    """Random per-image rotation (±degrees) and translation (±shift px) of x (B, C, H, W)."""
    b = x.shape[0]
    u = (torch.rand(b, 3, generator=gen) * 2 - 1).to(x.device)  # (B, 3) in [-1, 1]
    angle = u[:, 0] * degrees * torch.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    size = x.shape[-1]
    theta = torch.stack([torch.stack([cos, -sin, u[:, 1] * shift * 2 / size], 1),
                         torch.stack([sin, cos, u[:, 2] * shift * 2 / size], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


BATCH_SIZE, PEAK_LR = 64, 3e-3  # the classifier's optimizer


def train_classifier(images: np.ndarray, labels: np.ndarray, training: ClassifierTraining,
                     device: torch.device | str = "cpu", log: bool = False) -> MnistClassifier:
    """Adam with a one-cycle learning rate on uint8 images in the pixel layout and labels (N,)
    in 0..K-1 (K: ``training.num_classes``, else the largest label + 1), for
    ``training.epochs`` epochs from ``training.seed``."""
    epochs, seed, batch_size, lr = training.epochs, training.seed, BATCH_SIZE, PEAK_LR
    torch.manual_seed(seed)
    x = to_unit_tensor(images, device)
    classes = training.num_classes or int(np.max(labels)) + 1
    model = MnistClassifier(x.shape[1], x.shape[-1], classes).to(device)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    model.train()
    bar = Progress("classifier step" if log else None, epochs * steps_per_epoch, unit_scale=batch_size)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == steps_per_epoch:
                bar.update(epoch * steps_per_epoch + i + 1,
                           f"epoch {epoch + 1}/{epochs} loss {total / (i + 1):.4f}")
    bar.close()
    return model.eval()


def accuracy(model: MnistClassifier, images: np.ndarray, labels: np.ndarray,
             device: torch.device | str = "cpu") -> float:
    probs = classify(model, images, device=device).probs
    return float(np.mean(probs.argmax(1) == np.asarray(labels)))


def save_classifier(model: MnistClassifier, path: str | os.PathLike, info: dict) -> Path:
    """Write the weights and ``info`` (plain values: accuracy, data used) atomically."""
    state = {"kind": KIND, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "config": {"feature_dim": FEATURE_DIM, **model.shape}, "info": dict(info)}
    return save_checkpoint(state, path)


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu"
                    ) -> tuple[MnistClassifier, dict]:
    """Load a file written by :func:`save_classifier` safely; any problem is a ClassifierError."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"classifier not found: {path}")
    try:
        state = safe_load(path, what="classifier")
    except CheckpointError as err:
        raise ClassifierError(str(err)) from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise ClassifierError(f"{path} is not a classifier file written by "
                              f"`python -m nets.train_classifier`")
    try:
        check_format_version(state, path)
    except CheckpointError as err:
        raise ClassifierError(str(err)) from None
    try:
        shape = {k: int(v) for k, v in state.get("config", {}).items() if k != "feature_dim"}
        model = MnistClassifier(**shape)  # files from before other datasets: MNIST's
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ClassifierError(f"classifier {path} does not fit the network: "
                              f"{' '.join(str(err).split())[:300]}") from None
    return model.to(device).eval(), dict(state.get("info", {}))


@dataclass(frozen=True)
class ClassifierTraining:
    """How the evaluation classifier is trained: ``holdout`` fraction kept out to measure its
    accuracy, ``epochs``, ``seed``, and the ``min_accuracy`` below which it is not saved."""

    holdout: float = 0.2
    epochs: int = 8
    seed: int = 0
    min_accuracy: float = 0.97
    num_classes: int | None = None  # None: the largest label + 1

    def __post_init__(self):
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def train_and_save(images: np.ndarray, labels: np.ndarray, out: Path,
                   training: ClassifierTraining = ClassifierTraining(),
                   device: torch.device | str = "cpu", source: str = "") -> dict:
    """Train on a random (1 − holdout) of the images, test on the rest, save if accurate enough.

    Returns the info dict saved with the weights; raises ClassifierError (nothing written) when
    the held-out accuracy is below ``training.min_accuracy``.
    """
    holdout, epochs, seed = training.holdout, training.epochs, training.seed
    min_accuracy = training.min_accuracy
    train_idx, hold_idx = holdout_split(len(images), holdout, seed)
    t0 = time.perf_counter()
    model = train_classifier(images[train_idx], labels[train_idx], training, device, log=True)
    acc = accuracy(model, images[hold_idx], labels[hold_idx], device)
    info = {"held_out_accuracy": acc, "train_images": len(train_idx),
            "held_out_images": len(hold_idx), "epochs": epochs, "seed": seed, "source": source,
            "train_seconds": round(time.perf_counter() - t0, 1)}
    print(f"classifier: held-out accuracy {100 * acc:.2f}% on {len(hold_idx)} images "
          f"(trained on {len(train_idx)} in {info['train_seconds']}s)", file=sys.stderr)
    if acc < min_accuracy:
        raise ClassifierTooWeak(f"held-out accuracy {100 * acc:.2f}% is below the required "
                              f"{100 * min_accuracy:.0f}%; not saved (train on more images or "
                              f"epochs)")
    save_classifier(model, out, info)
    return info
