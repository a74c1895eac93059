"""Checking the inputs of the public functions, once, at entry.

Data arrays (x0, x_t, noise, model outputs) are converted to float64 here and checked to be finite;
the dtype a data result is handed back in is NumPy's promotion of the floating inputs (float64 for
integer or Python-number inputs). Step indices `t` are checked to be integers in [0, T) and aligned
to the leading (batch) axes of the data: `t` of shape (B,) against `x` of shape (B, C, H, W) gathers
a table to shape (B, 1, 1, 1). Every problem raises `ValueError` naming the argument.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def as_count(name: str, value: Any, minimum: int = 1) -> int:
    """A Python int >= `minimum` (bools and floats are refused, even 3.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def as_real(
    name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool
) -> float:
    """A finite Python float in the interval from `low` to `high` (open or closed at each end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not np.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def as_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of `choices` (the arguments of a Literal), else ValueError listing them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name}: {value!r}; expected one of {choices}")
    return value


def as_data(**named: Any) -> tuple[list[np.ndarray], np.dtype]:
    """The float64 versions of the named data arrays, and the dtype to return results in."""
    arrays, dtypes = [], []
    for name, value in named.items():
        a = np.asarray(value)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a real floating array, got dtype {a.dtype}")
        a64 = a.astype(np.float64, copy=False)
        if not np.all(np.isfinite(a64)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        arrays.append(a64)
        dtypes.append(a.dtype if a.dtype.kind == "f" else np.dtype(np.float64))
    return arrays, np.result_type(*dtypes)


def as_step_index(t: Any, num_timesteps: int) -> np.ndarray:
    """`t` as an int64 array (any shape) of indices in [0, T); index t stands for step t+1."""
    a = np.asarray(t)
    if a.dtype.kind not in "iu":
        raise ValueError(f"t must be an integer array (index t stands for step t+1), got dtype "
                         f"{a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_timesteps):
        raise ValueError(f"t must lie in [0, {num_timesteps - 1}] for T = {num_timesteps}, got "
                         f"values in [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def align(t: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """`t` reshaped to (t.shape + (1,)*k) so it indexes the leading axes of the data, and the
    broadcast shape of the result."""
    ndim = max(a.ndim for a in arrays)
    if t.ndim > ndim:
        raise ValueError(f"t has shape {t.shape} but the data have only {ndim} dimensions; t "
                         "indexes the leading (batch) axes")
    t = t.reshape(t.shape + (1,) * (ndim - t.ndim))
    try:
        shape = np.broadcast_shapes(t.shape, *(a.shape for a in arrays))
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"shapes do not broadcast: t {t.shape} (aligned to the leading axes) "
                         f"against data {shapes}") from None
    return t, shape


def broadcast_data(*arrays: np.ndarray) -> tuple[int, ...]:
    """The broadcast shape of the data arrays, or ValueError naming their shapes."""
    try:
        return np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def as_step_sequence(timesteps: Any, num_timesteps: int) -> np.ndarray:
    """A non-empty, strictly increasing (K,) int64 array of schedule indices in [0, T)."""
    a = np.asarray(timesteps)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D array, got shape {a.shape}")
    a = as_step_index(a, num_timesteps)
    if np.any(np.diff(a) <= 0):
        raise ValueError("timesteps must be strictly increasing (ascending, no repeats)")
    return a


def read_only(a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """A read-only copy of `a` in `dtype`."""
    out = np.array(a, dtype=dtype)
    out.setflags(write=False)
    return out
