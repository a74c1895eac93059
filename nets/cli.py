"""Shared command-line plumbing: range-checked argument types and one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a value to show: not for None or on/off flags."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message: str, code: int = 2):
    """Exit with a one-line message naming the problem (never a traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def int_at_least(low: int, high: int | None = None):
    """An integer >= ``low`` (and <= ``high`` when given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value
    return parse


def float_in(low: float, high: float, low_open: bool = True, high_open: bool = False):
    """A float in an interval; open/closed ends as flagged (default (low, high])."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_low = value <= low if low_open else value < low
        bad_high = value >= high if high_open else value > high
        if value != value or bad_low or bad_high:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    return parse


positive_int = int_at_least(1)
positive_float = float_in(0.0, float("inf"), high_open=True)


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def directory(text: str) -> Path:
    """A folder path that may not exist yet, but is not an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text}")
    return path


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # reported just below
    if device.type not in ("cpu", "cuda", "mps"):
        fail(f"--device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device: cuda requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device: {name} requested but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail("--device: mps requested but MPS is not available")
    return device


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Create ``path`` and prove it writable now, not after an hour of training."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        fail(f"{flag}: cannot write to {path}: {err.strerror or err}")
    return path


PRECISIONS = ("auto", "fp32", "bf16")


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies in bfloat16 in hardware (CUDA since Ampere; CPUs with
    AVX512-BF16 or AMX, through oneDNN). Elsewhere bf16 autocast is emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype for ``--precision``: None means plain float32.

    ``auto`` picks bfloat16 where the device has it natively and float32 elsewhere; the
    weights, the optimizer, the loss's reduction and every diffusion coefficient stay float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32" or (precision == "auto" and not has_native_bf16(device)):
        return None
    if device.type not in ("cpu", "cuda"):
        fail(f"--precision bf16: bfloat16 autocast is not supported on {device.type}; use fp32")
    return torch.bfloat16


def describe_precision(dtype: torch.dtype | None) -> str:
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp32"
