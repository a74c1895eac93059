"""Checkpoints: written atomically, loaded without unpickling arbitrary objects, and turned back
into the model they describe.

A checkpoint is a dict of tensors and plain Python values (config dicts, lists, numbers), so
``torch.load(weights_only=True)`` reads it: a file from a stranger cannot run code on load.
Every file carries ``format_version``; a file of another version is refused on load, by name.
Every problem is a one-line :class:`CheckpointError`; the commands print it and exit 2.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from nets.data.dataset import MNIST_INFO, DatasetInfo
from nets.diffusion import Diffusion, make_schedule
from nets.files import atomic_write
from nets.unet import UNet, UNetConfig

FORMAT_VERSION = 1  # of the dict save_checkpoint writes; bump it when its meaning changes


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or for another model."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` so that a crash at any moment leaves the old file intact.

    The bytes go through :func:`nets.files.atomic_write` (temporary file, fsync, rename).
    Raises CheckpointError, writing nothing, when the model or EMA weights hold a NaN or inf.
    """
    path = Path(path)
    for key in ("model", "ema"):  # a diverged run must never replace a good checkpoint
        bad = [name for name, t in state.get(key, {}).items()
               if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise CheckpointError(f"refusing to write {path}: non-finite values in the {key} "
                                  f"weights ({_some(bad)})")
    return atomic_write(path, lambda f: torch.save({**state, "format_version": FORMAT_VERSION}, f))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def safe_load(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint"):
    """``torch.load(weights_only=True)`` of a file; any failure is a one-line CheckpointError."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{what} {path} holds objects that a safe load refuses (it may try to run "
            f"code); refusing it: {_reason(err)}") from None
    except Exception as err:  # torch.load raises many types on damaged bytes (KeyError, ...)
        raise CheckpointError(f"{what} {path} is not readable: {_reason(err)}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); any failure is a CheckpointError."""
    path = resolve_checkpoint(path)
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a ddpm checkpoint (no model weights and config)")
    check_format_version(state, path)
    return state


def check_format_version(state: dict, path: Path) -> None:
    """CheckpointError unless the file is of this package's FORMAT_VERSION (absent: written by
    hand, read as the current version)."""
    version = state.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} is checkpoint format version {version!r}; this version of "
                              f"ddpm reads format {FORMAT_VERSION} only")


def load_weights(module: torch.nn.Module, weights: object, what: str = "weights") -> None:
    """``module.load_state_dict(weights)``; a mismatch is a CheckpointError naming keys and shapes."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"the {what} are a {type(weights).__name__}, not a state dict")
    own = module.state_dict()
    problems = []
    shapes = [f"{k} {tuple(getattr(weights[k], 'shape', ()))} vs {tuple(own[k].shape)}"
              for k in own if k in weights and getattr(weights[k], "shape", None) != own[k].shape]
    for label, keys in (("shape mismatch (checkpoint vs model)", shapes),
                        ("missing", [k for k in own if k not in weights]),
                        ("unexpected", [k for k in weights if k not in own])):
        if keys:
            problems.append(f"{label}: {_some(keys)}")
    if problems:
        raise CheckpointError(f"the {what} do not fit the U-Net the saved config describes: "
                              + "; ".join(problems))
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"the {what} do not load: {str(err).splitlines()[0]}") from None


@dataclass
class LoadedModel:
    """A trained model ready to sample or score: the U-Net (eval mode, no gradients), its diffusion
    tables, and what the checkpoint says about it."""

    model: UNet
    diffusion: Diffusion
    config: dict  # the TrainConfig saved in the checkpoint, as a dict
    step: int
    path: Path
    class_counts: list[int] | None = None  # training images per class (checkpoints since 2026-12)
    weights: str = "ema"  # which of the checkpoint's weights: "ema" or "raw"
    distilled: Distilled | None = None  # a nets.distill student: the steps it was distilled for
    dataset: DatasetInfo = MNIST_INFO  # what it was trained on (checkpoints before 2026-12-05: MNIST)
    consistency: Consistency | None = None  # a nets.distill --method consistency model

    @property
    def conditional(self) -> bool:
        return self.model.config.num_classes > 0


@dataclass(frozen=True)
class Distilled:
    """What a ``nets.distill`` student records: the ascending ``timesteps`` of the DDIM (η = 0)
    chain it was distilled for (trailing spacing), its teacher and the step count it started from."""

    timesteps: tuple[int, ...]
    teacher: str
    from_steps: int

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_record(cls, record: object, path: Path, num_timesteps: int) -> Distilled:
        """The checkpoint's ``distilled`` entry, checked; CheckpointError naming what is wrong."""
        try:
            timesteps = tuple(int(t) for t in record["timesteps"])
            out = cls(timesteps, str(record["teacher"]), int(record["from_steps"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its distillation record is incomplete "
                                  f"({type(err).__name__}: {err})") from None
        if (not timesteps or list(timesteps) != sorted(set(timesteps))
                or timesteps[0] < 0 or timesteps[-1] >= num_timesteps):
            raise CheckpointError(f"{path}: its distilled step list is not ascending indices in "
                                  f"[0, {num_timesteps - 1}]")
        return out


@dataclass(frozen=True)
class Consistency:
    """What a ``nets.distill --method consistency`` model records: its teacher, the calls it samples
    with by default (multistep consistency sampling), the times it samples at for 1, 2 and 4
    calls, and the stages of its tuning."""

    teacher: str
    calls: int
    stages: int
    times: dict[int, tuple[int, ...]]  # calls → the ascending indices it samples at

    @classmethod
    def from_record(cls, record: object, path: Path, num_timesteps: int) -> Consistency:
        """The checkpoint's ``consistency`` entry, checked; CheckpointError naming what is wrong."""
        try:
            times = {int(k): tuple(int(t) for t in v) for k, v in record["times"].items()}
            out = cls(str(record["teacher"]), int(record["calls"]), int(record["stages"]), times)
            t_min = int(record["t_min"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its consistency record is incomplete "
                                  f"({type(err).__name__}: {err})") from None
        fits = all(len(v) == k and list(v) == sorted(set(v)) and 0 < v[0] and v[-1] < num_timesteps
                   for k, v in times.items())
        if t_min != 0 or not 1 <= out.calls < num_timesteps or out.stages < 1 or not fits:
            raise CheckpointError(f"{path}: its consistency record is not one this package writes "
                                  f"(t_min {t_min}, {out.calls} calls, {out.stages} stages)")
        return out


def load_model(path: str | os.PathLike, weights: str = "ema",
               device: torch.device | str = "cpu") -> LoadedModel:
    """The U-Net and Diffusion a checkpoint describes (``weights``: "ema" or "raw"), on ``device``;
    any problem with the file, its config or its weights is a CheckpointError."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    resolved = resolve_checkpoint(path)
    state = load_checkpoint(resolved)
    cfg = state["config"]
    try:
        if not isinstance(cfg, dict):
            raise TypeError(f"config is a {type(cfg).__name__}, not a dict")
        diffusion = Diffusion(make_schedule(cfg["schedule"], int(cfg["timesteps"])),
                              cfg.get("objective", "eps"))
        unet_config = UNetConfig.from_dict(cfg["unet"])
        model = UNet(unet_config)
        step = int(state.get("step", 0))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{resolved} is not a DDPM checkpoint of this package "
                              f"(its config does not describe a U-Net and schedule: "
                              f"{type(err).__name__}: {err})") from None
    dataset = dataset_of(state.get("dataset"), unet_config, resolved)
    key = "ema" if weights == "ema" else "model"
    if not isinstance(state.get(key), dict):
        raise CheckpointError(f"{resolved} holds no {weights} weights"
                              + (" (try --weights raw)" if weights == "ema" else ""))
    load_weights(model, state[key], f"{weights} weights in {resolved}")
    model.requires_grad_(False)
    record = state.get("distilled")
    distilled = None if record is None else Distilled.from_record(record, resolved, diffusion.num_timesteps)
    record = state.get("consistency")
    consistency = (None if record is None
                   else Consistency.from_record(record, resolved, diffusion.num_timesteps))
    return LoadedModel(model.to(device).eval(), diffusion.to(device), cfg, step, resolved,
                       _class_counts(state.get("class_counts"), unet_config.num_classes, resolved), weights,
                       distilled, dataset, consistency)


def dataset_of(record, unet: UNetConfig, path: Path) -> DatasetInfo:
    """What the model was trained on: the checkpoint's ``dataset`` record, checked against its
    U-Net; a checkpoint from before datasets were recorded is MNIST's."""
    if record is None:
        if unet.image_shape != MNIST_INFO.shape:
            raise CheckpointError(f"{path} records no dataset and is not an MNIST model "
                                  f"({unet.in_channels}×{unet.image_size}² images)")
        return MNIST_INFO
    try:
        info = DatasetInfo(str(record["name"]), str(record["title"]), tuple(int(v) for v in record["shape"]),
                           tuple(str(c) for c in record["class_names"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its dataset record is incomplete "
                              f"({type(err).__name__}: {err})") from None
    if info.shape != unet.image_shape or (unet.num_classes and unet.num_classes != len(info.class_names)):
        raise CheckpointError(f"{path}: its dataset record ({info.describe()}) does not fit its U-Net "
                              f"({unet.in_channels}×{unet.image_size}² images, {unet.num_classes} classes)")
    return info


def _class_counts(counts, num_classes: int, path: Path) -> list[int] | None:
    if counts is None or not num_classes:
        return None
    if (not isinstance(counts, list) or len(counts) != num_classes
            or not all(isinstance(c, int) and c >= 0 for c in counts) or not sum(counts)):
        raise CheckpointError(f"{path}: class_counts is not {num_classes} counts of training images")
    return counts


def _some(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _reason(err: Exception) -> str:
    """One line from a torch.load error: what the safe unpickler refused, else the first sentence."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    line = next((line for line in lines if "unsupported" in line.lower()), lines[0])
    return f"{type(err).__name__}: {line.split('. ')[0].rstrip('.')[:200]}"
