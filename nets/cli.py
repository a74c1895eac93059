"""What the commands share: range-checked argument types, the flags that mean the same thing in
every command (--seed, --device, --data-dir, --precision), and one-line errors (exit 2).

The library raises exceptions that name the problem; the ``*_from_flag`` and ``*_or_exit``
helpers here are the one place each becomes "error: <flag>: <problem>" and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from nets import device as devices
from nets import fields
from nets.data import MNIST_ERRORS, ImageSet, load_dataset
from nets.data.dataset import DATA_ERRORS
from nets.fields import ConfigError

T = TypeVar("T")


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


_NOT_GIVEN = object()


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """(the parsed flags, the ones the command line gave: {dest: value}), so that a default is
    never mistaken for a choice (a resumed run changes only what the command line says)."""
    args = parser.parse_args(argv)
    probe = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), _NOT_GIVEN))
    given = vars(parser.parse_args(argv, namespace=probe))
    return args, {k: v for k, v in given.items() if v is not _NOT_GIVEN}


def flag_of(name: str) -> str:
    """The flag that sets the config field ``name``: ``nets.fields.flag_of``, and for ``unet``
    the U-Net's flags that nets.train folds into it."""
    if name == "unet":
        return "--base-channels/--channel-mults/--num-res-blocks/--attention-resolutions/--dropout"
    return fields.flag_of(name)


def main_process() -> bool:
    """Whether this process speaks for the job: not a torchrun rank other than 0."""
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def warnings_as_lines() -> None:
    """Show the library's warnings as one "warning: ..." line each, not file:line and source."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr, flush=True)
    warnings.showwarning = show


def fail(message: str, code: int = 2):
    """Exit with a one-line message naming the problem (never a traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def exit_after_interrupt(message: str, code: int = 130):
    """Ctrl-C caught: one line and exit ``code`` at once. os._exit, not SystemExit: a
    KeyboardInterrupt that surfaced inside exec() of a string (torch's lazy imports build
    dataclasses that way) is marked unhandled by CPython, which then ends the process by SIGINT
    after our message, whatever we return. Nothing needs closing this early in a run."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def library_call(call: Callable[[], T], ctrl_c: str, checkpoint_flag: str = "") -> tuple[T | None, int]:
    """(``call()``, 0), with the library's errors turned into the commands' exits, in one place:
    a bad value (ConfigError) is "error: --flag: ..." and exit 2, as is any other ValueError (a
    checkpoint's, prefixed ``checkpoint_flag``) and unavailable data; a diverged run exits 1 (rank
    0 says why); a run stopped by a signal returns (None, 130 or 143) after its message; Ctrl-C
    before the loop exits 130 with ``ctrl_c``."""
    from nets.checkpoint import CheckpointError
    from nets.training.fit import RunInterrupted
    from nets.training.loop import TrainingFailed

    try:
        return call(), 0
    except RunInterrupted as err:
        if not main_process():
            return None, err.code
        if isinstance(err.__cause__, KeyboardInterrupt):
            exit_after_interrupt(str(err), err.code)
        print(str(err), file=sys.stderr, flush=True)
        return None, err.code
    except KeyboardInterrupt:
        exit_after_interrupt(ctrl_c)
    except TrainingFailed as err:
        if not main_process():
            raise SystemExit(1) from None  # every rank saw the same losses; rank 0 says why
        fail(str(err), code=1)
    except ConfigError as err:
        fail(f"{flag_of(err.field)}: {err.reason}")
    except CheckpointError as err:
        fail(f"{checkpoint_flag + ': ' if checkpoint_flag else ''}{err}")
    except (ValueError, *MNIST_ERRORS) as err:
        fail(str(err))


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


SEED_MAX = 2**32 - 1
seed_value = int_at_least(0, SEED_MAX)


def add_seed(p: argparse.ArgumentParser, help: str, default: int = 0) -> None:
    p.add_argument("--seed", type=seed_value, default=default, help=f"{help}; 0 to {SEED_MAX}")


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=devices.DEVICE_HELP)


def add_data_dir(p: argparse.ArgumentParser, help: str = "folder with a named dataset's files "
                 "(downloaded there if missing)") -> None:
    p.add_argument("--data-dir", type=directory, default=None,
                   help=f"{help}; default: ~/.cache/ddpm/<name> (for MNIST $DDPM_DATA_DIR first)")


def add_precision(p: argparse.ArgumentParser, note: str, default: str = "auto") -> None:
    p.add_argument("--precision", choices=devices.PRECISIONS, default=default,
                   help="the network's arithmetic: bf16 autocast or fp32; auto = bf16 where the "
                   f"device has it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32. {note}")


def device_from_flag(name: str) -> torch.device:
    """``--device``'s device, or exit 2 naming the flag."""
    try:
        return devices.pick_device(name)
    except ValueError as err:
        fail(f"--device: {err}")


def autocast_from_flag(precision: str, device: torch.device) -> torch.dtype | None:
    """``--precision``'s autocast dtype on ``device`` (None: fp32), or exit 2 naming the flag."""
    try:
        return devices.autocast_dtype(precision, device)
    except ValueError as err:
        fail(f"--precision {precision}: {err}")


def dataset_or_exit(dataset: str, data_dir: str | os.PathLike | None, split: str) -> ImageSet:
    """A dataset's split (a folder: its images), or exit 2 with the loader's one line."""
    try:
        return load_dataset(dataset, data_dir, split)
    except DATA_ERRORS as err:
        fail(str(err))
    except ConfigError as err:
        fail(f"{flag_of(err.field)}: {err.reason}")
