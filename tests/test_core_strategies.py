"""Hypothesis strategies shared by the tests/test_core_*.py files (imported as a module), and a
check that they draw what they promise.

Bounds, with their reasons:
- T in [1, 4000]: the issue's range; 4000 is four times the usual T = 1000.
- Random β arrays are log-uniform in [1e-10, cap] with cap = 1 - exp(-600/T) (at most 0.999),
  so ᾱ_T ≥ e^-600 stays a normal float64 (no underflow) while β spans ten decades.
  They are generated from a Hypothesis-drawn seed so that T = 4000 costs one draw, not 4000.
- Small arrays (T ≤ 8) are drawn element by element so Hypothesis can shrink and hit edges.
- Named schedules use β_start in [1e-5, 1e-3], β_end in [β_start, 0.05] (Ho et al. use 1e-4
  and 0.02) and cosine s in [0, 0.05] (Nichol & Dhariwal use 0.008).
- Data: x0 in [-1, 1] (the data range), batches of at most 4 × 5 values: the identities are
  elementwise, so bigger arrays add time, not coverage.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffusion_core import (
    DiffusionSchedule,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    sigmoid_betas,
)

MAX_T = 4000


@st.composite
def named_betas(draw, min_T: int = 1, max_T: int = MAX_T, zero_terminal_snr: bool | None = None):
    """Betas of a linear, cosine or sigmoid schedule, optionally rescaled to zero terminal SNR."""
    T = draw(st.integers(min_T, max_T))
    kind = draw(st.sampled_from(["linear", "cosine", "sigmoid"]))
    if kind == "cosine":
        betas = cosine_betas(T, s=draw(st.floats(0.0, 0.05)))
    else:
        start = draw(st.floats(1e-5, 1e-3))
        end = draw(st.floats(start, 0.05))
        betas = (linear_betas if kind == "linear" else sigmoid_betas)(T, start, end)
    rescale = draw(st.booleans()) if zero_terminal_snr is None else zero_terminal_snr
    return rescale_zero_terminal_snr(betas) if rescale and T >= 2 else betas


@st.composite
def random_betas(draw, min_T: int = 1, max_T: int = MAX_T, min_beta: float = 1e-10):
    """A valid random β array, log-uniform over [min_beta, cap]; sometimes β_T = 1 (ᾱ_T = 0)."""
    T = draw(st.integers(min_T, max_T))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cap = min(0.999, -math.expm1(-600.0 / T))
    betas = np.exp(rng.uniform(math.log(min_beta), math.log(cap), size=T))
    if T >= 2 and draw(st.booleans()):
        betas[-1] = 1.0
    return betas


def small_betas(min_T: int = 1, max_T: int = 8):
    """Short β arrays drawn element by element in [1e-8, 0.999]."""
    return st.integers(min_T, max_T).flatmap(
        lambda T: hnp.arrays(np.float64, T, elements=st.floats(1e-8, 0.999)))


def any_betas(min_T: int = 1):
    """Every kind of schedule the tests cover."""
    if min_T > 8:
        return st.one_of(named_betas(min_T=min_T), random_betas(min_T=min_T))
    return st.one_of(named_betas(min_T=min_T), random_betas(min_T=min_T),
                     small_betas(min_T))


def schedules(min_T: int = 1):
    return any_betas(min_T).map(DiffusionSchedule.from_betas)


def named_schedules(min_T: int = 1, max_T: int = MAX_T, zero_terminal_snr: bool | None = None):
    return named_betas(min_T, max_T, zero_terminal_snr).map(DiffusionSchedule.from_betas)


@st.composite
def batches(draw, schedule: DiffusionSchedule, batch: int | None = None):
    """(x0 in [-1, 1], noise ~ N(0, 1), t) with x0, noise of shape (B, D) and t of shape (B,)."""
    B = batch or draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    D = draw(st.integers(1, 5))
    t = np.array(draw(st.lists(st.integers(0, schedule.num_timesteps - 1), min_size=B,
                               max_size=B)), dtype=np.int64)
    return rng.uniform(-1, 1, (B, D)), rng.standard_normal((B, D)), t


@given(any_betas())
def test_strategies_draw_valid_betas(betas):
    schedule = DiffusionSchedule.from_betas(betas)
    assert 1 <= schedule.num_timesteps <= MAX_T
