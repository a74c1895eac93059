"""Scoring generated digits: the fixed parts of an evaluation (the real split, the classifier
and its features of the real digits) built once as a :class:`Judge`, then any number of sample
sets scored against it with :func:`score_samples`: against exactly the digits the model never
trained on where its checkpoint records them, the real-vs-real floor at the same n beside them,
memorisation, and optionally the NLL of real digits. ``nets.evaluate`` and
``Pipeline.evaluate`` are its two callers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nets.checkpoint import LoadedModel
from nets.data import MNIST_ERRORS, MNIST_INFO, ImageSet, load_dataset
from nets.evaluation import classifier as clf
from nets.evaluation.nll import DEFAULT_NLL_IMAGES, nll_bits_per_dim
from nets.evaluation.protocol import Judge, RealSet, TrainingSplit, evaluate_samples, training_images_of
from nets.evaluation.report import EvaluationReport
from nets.evaluation.samples import SamplesError, check_arrays


class ClassifierMissing(ValueError):
    """The classifier file is missing and training it was not allowed; ``command`` trains it."""

    def __init__(self, path: Path, command: str):
        super().__init__(f"{path} not found; train it with: {command}")
        self.command = command


def classifier_command(split: str, path: Path, data_dir: str | os.PathLike | None,
                       dataset: str = "mnist") -> str:
    """The command line that trains the classifier ``path`` on ``split``."""
    return (f"python -m nets.train_classifier --split {split} --out {path}"
            + (f" --dataset {dataset}" if dataset != "mnist" else "")
            + (f" --data-dir {data_dir}" if data_dir else ""))


@dataclass(frozen=True)
class RealData:
    """Which real images a judge compares with: ``dataset`` (a name or a folder) read at
    ``image_size`` with ``channels`` (None: its own), its ``split`` from ``data_dir``."""

    dataset: str = "mnist"
    data_dir: str | None = None
    split: str = "test"
    image_size: int | None = None
    channels: int | None = None

    @classmethod
    def of_model(cls, model: LoadedModel, data_dir: str | os.PathLike | None = None,
                 split: str = "test") -> RealData:
        """The dataset ``model`` was trained on, read as it read it (a folder is one split: its own)."""
        cfg, info = model.config, model.dataset
        folder = data_dir if data_dir is not None else cfg.get("data_dir")
        if info.is_folder:
            split = cfg.get("split", "train")
        return cls(info.name, None if folder is None else str(folder), split, info.shape[1], info.shape[0])

    def load(self) -> ImageSet:
        return load_dataset(self.dataset, self.data_dir, self.split, self.image_size, self.channels)


def make_judge(data_dir: str | os.PathLike | None = None, split: str = "test",
               classifier: str | os.PathLike | None = None, train_missing: bool = True,
               device: torch.device | str = "cpu", *, real: RealData | None = None) -> Judge:
    """The real images (MNIST ``split`` of ``data_dir``, or ``real``: any labelled dataset) and
    the classifier (``classifier`` path; default for MNIST $DDPM_CLASSIFIER or
    ~/.cache/ddpm/classifier.pt, for another dataset one file per dataset under
    ~/.cache/ddpm/classifiers/), trained and saved on those images first when missing (about a
    minute on a CPU) unless ``train_missing`` is False (then ClassifierMissing).

    Raises the data errors of :func:`nets.data.load_dataset`, ValueError for an unlabelled
    dataset (a judge needs classes), ClassifierError and OSError.
    """
    device = torch.device(device)
    real = real or RealData("mnist", None if data_dir is None else str(data_dir), split)
    images = real.load()
    if not images.info.labelled:
        raise ValueError(f"{images.info.title} is unlabelled: the evaluation's metrics (FD in a "
                         f"classifier's features, recognised share, class entropy) need a classifier "
                         f"trained on labelled real images, so an unlabelled dataset has no judge "
                         f"(docs/evaluation.md); give the folder class subfolders")
    path = Path(classifier) if classifier is not None else clf.default_classifier_path(images)
    if not path.exists():
        command = classifier_command(real.split, path, real.data_dir, real.dataset)
        if not train_missing:
            raise ClassifierMissing(path, command)
        print(f"classifier not found at {path}: training it on {images.info.title} {real.split} "
              f"({len(images)} images; the same as `{command}`)", file=sys.stderr)
        clf.train_and_save(images.images, images.labels, path, clf.training_for(images.info), device=device,
                           source=f"{images.info.title} {real.split}")
    model, info = clf.load_classifier(path, device)
    clf.check_fits(model, images.info, path)
    features = clf.classify(model, images.images, device=device).features
    return Judge(real.split, real.data_dir, images, model, path, info, features, device, real)


@dataclass(frozen=True)
class ScoreOptions:
    """``seed`` of the subsets and NLL noise; without a checkpoint, ``train_images``: the model
    trained on the first N of the split (None: all of it); with one, ``nll_images`` real digits
    for the bits/dim (0: none; T network calls per batch of ``nll_batch_size``)."""

    seed: int = 0
    train_images: int | None = None
    nll_images: int = 0
    nll_batch_size: int = 64

    def __post_init__(self):
        if self.nll_images < 0 or self.nll_batch_size < 1:
            raise ValueError(f"nll_images must be >= 0 and nll_batch_size >= 1, got "
                             f"{self.nll_images}, {self.nll_batch_size}")


def score_samples(judge: Judge, samples: np.ndarray, labels: np.ndarray | None = None,
                  model: LoadedModel | None = None, options: ScoreOptions = ScoreOptions(),
                  about: dict | None = None) -> EvaluationReport:
    """The report of uint8 ``samples`` (N ≥ 2, in the real images' layout) (``labels``: the
    classes they were asked
    for; ``about``: how they were made, kept in the report): metrics against the real digits,
    the floor, memorisation against the model's training images, and (``model`` given,
    ``options.nll_images`` > 0) the NLL of real digits. The one place a report is built.

    With ``model`` its config says which digits it trained on; where it trained on this split
    and held some out, the samples are compared with exactly those. ValueError when the config's
    --limit/--holdout do not fit the split; MNIST errors when its other split is missing.
    """
    check_samples(samples, labels, judge.real.info.shape, len(judge.real.info.class_names))
    train, held_out, described = training_images_of(
        judge.real.images, judge.split, judge.images_of,
        model.config if model is not None else None, options.train_images, judge.real.info.title)
    title = judge.real.info.title
    real, which = RealSet(judge.real.images, judge.real_features), f"all of {title} {judge.split}"
    if model is not None and model.config.get("split", judge.split) == judge.split and len(held_out) >= 2:
        which = f"the {len(held_out)} images of {title} {judge.split} it never trained on"
        real = RealSet(held_out, clf.classify(judge.classifier, held_out, device=judge.device).features)
    parts = evaluate_samples(judge, samples, labels, real, TrainingSplit(train, held_out), options.seed)
    parts["memorisation"]["training_images"] = described
    nll = None
    if model is not None and options.nll_images:
        nll = _nll(model, train, held_out, options, judge.device)
    return EvaluationReport(
        real={"dataset": judge.real.info.name, "split": judge.split, "count": len(real.images),
              "reference": which}, **parts,
        classifier={"path": str(judge.classifier_path), **judge.classifier_info}, nll=nll,
        samples=dict(about or {}))


def _nll(model: LoadedModel, train: np.ndarray, held_out: np.ndarray, options: ScoreOptions,
         device: torch.device) -> dict:
    """Bits/dim of held-out real images (training images when too few are held out)."""
    source, which = (held_out, "held-out") if len(held_out) >= options.nll_images else (train, "training")
    n = min(options.nll_images, len(source))
    print(f"NLL on {n} {which} images: {model.diffusion.num_timesteps} model calls per batch of "
          f"{options.nll_batch_size}", file=sys.stderr)
    nll = nll_bits_per_dim(model.model, model.diffusion, source[:n], options.nll_batch_size,
                           options.seed, progress=True)
    return {**asdict(nll), "which": which, "checkpoint": str(model.path), "weights": model.weights,
            "timesteps": model.diffusion.num_timesteps}


def check_samples(samples: np.ndarray, labels: np.ndarray | None,
                  shape: tuple[int, int, int] = MNIST_INFO.shape, num_classes: int = 10) -> None:
    """ValueError unless ``samples`` are uint8 images (N ≥ 2) of network shape ``shape`` in the
    pixel layout, with matching ``labels`` (classes 0..num_classes-1)."""
    try:
        check_arrays("samples", np.asarray(samples), None if labels is None else np.asarray(labels),
                     shape, num_classes)
    except SamplesError as err:
        raise ValueError(str(err)) from None


__all__ = ["DEFAULT_NLL_IMAGES", "MNIST_ERRORS", "ClassifierMissing", "EvaluationReport", "Judge", "RealData",
           "ScoreOptions", "check_samples", "classifier_command", "make_judge", "score_samples"]
