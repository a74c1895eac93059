"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (config dicts, lists, numbers), so
``torch.load(weights_only=True)`` reads it: a file from a stranger cannot run code on load.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or for another model."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` so that a crash at any moment leaves the old file intact.

    The bytes go through :func:`atomic_write` (temporary file, fsync, rename).
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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it and rename it over
    ``path`` (``os.replace`` is atomic on POSIX), then fsync the directory: a crash at any moment
    leaves either the old file or the new one, never a torn one. A failed write leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


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
    return state


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
        raise CheckpointError(f"the {what} do not fit the model the saved config describes: "
                              + "; ".join(problems))
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"the {what} do not load: {str(err).splitlines()[0]}") from None


def _some(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _reason(err: Exception) -> str:
    """One line from a torch.load error: what the safe unpickler refused, else the first sentence."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    line = next((line for line in lines if "unsupported" in line.lower()), lines[0])
    return f"{type(err).__name__}: {line.split('. ')[0].rstrip('.')[:200]}"
