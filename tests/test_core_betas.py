"""β schedules: each test is named after the property it proves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_core_strategies import MAX_T, named_betas, random_betas

from diffusion_core import (
    DiffusionSchedule,
    betas_from_alpha_bar,
    cosine_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    sigmoid_betas,
    validate_betas,
)

# β endpoints in [1e-6, 0.05]: with T ≤ 4000, Σβ ≤ 200 < 708, so ᾱ_T stays a normal float64
# (larger endpoints make ᾱ underflow, which test_core_validation shows raises ValueError).
unit = st.floats(1e-6, 0.05)


def _cosine_f(u: float, s: float = 0.008) -> float:
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal (2021) eq. 17


@given(st.integers(2, MAX_T), unit, unit)
def test_linear_betas_endpoints_are_exact(T, start, end):
    betas = linear_betas(T, start, end)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert betas[0] == start and betas[-1] == end


def test_linear_betas_of_ho_et_al_run_from_1e_4_to_0_02():
    betas = linear_betas(1000)
    assert (betas[0], betas[-1]) == (1e-4, 0.02)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


@given(unit, unit)
def test_linear_betas_with_one_step_is_beta_start(start, end):
    np.testing.assert_array_equal(linear_betas(1, start, end), [start])


@given(st.integers(1, MAX_T), st.floats(0.0, 0.05))
def test_cosine_alphas_cumprod_is_f_ratio_where_unclipped(T, s):
    betas = cosine_betas(T, s=s)
    f = np.array([_cosine_f(i / T, s) for i in range(T + 1)])
    unclipped = np.cumprod(betas < 0.999).astype(bool)  # steps before the first clip
    # tolerance: the cumulative product of up to 4000 ratios, each rounded to within 2u
    np.testing.assert_allclose(np.cumprod(1 - betas)[unclipped], (f[1:] / f[0])[unclipped],
                               rtol=4 * T * 2.0**-52)


def test_cosine_betas_clip_the_last_step_at_max_beta():
    betas = cosine_betas(1000)
    assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)


@given(st.integers(1, MAX_T), unit, unit)
def test_sigmoid_betas_lie_between_start_and_end_and_are_monotone(T, start, end):
    betas = sigmoid_betas(T, start, end)
    assert np.all(betas >= min(start, end)) and np.all(betas <= max(start, end))
    assert np.all(np.diff(betas) * np.sign(end - start) >= 0)


def test_sigmoid_betas_are_symmetric_about_the_midpoint():
    betas = sigmoid_betas(1000)
    np.testing.assert_allclose(betas + betas[::-1], 1e-4 + 0.02, rtol=1e-12)


@example(T=1, c=7.0)  # found by Hypothesis: 1 - e^-7 > 0.999 is clipped to max_beta
@given(st.integers(1, MAX_T), st.floats(0.1, 20.0))
def test_betas_from_exponential_alpha_bar_are_constant_clipped_at_max_beta(T, c):
    betas = betas_from_alpha_bar(lambda u: math.exp(-c * u), T)
    np.testing.assert_allclose(betas, min(-math.expm1(-c / T), 0.999), rtol=1e-9)


def test_betas_from_alpha_bar_reaching_zero_with_max_beta_one_end_at_one():
    betas = betas_from_alpha_bar(lambda u: 1 - u, 10, max_beta=1.0)
    np.testing.assert_allclose(betas, 1 / np.arange(10, 0, -1), rtol=1e-12)
    assert betas[-1] == 1.0


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_make_betas_is_the_named_function(name):
    function = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}[name]
    np.testing.assert_array_equal(make_betas(name, 50), function(50))


def test_make_betas_passes_keyword_arguments():
    np.testing.assert_array_equal(make_betas("linear", 5, beta_end=0.5), linear_betas(5, 1e-4, 0.5))


# β ≥ 1e-6 here: rescaling maps α' at the second-to-last step to about (β_T/(β_{T-1}+β_T))²,
# which must stay above 2^-53 for 1 - α' < 1 (test_zero_terminal_snr_that_rounds_... below)
@given(named_betas(min_T=2, zero_terminal_snr=False) | random_betas(min_T=2, min_beta=1e-6))
def test_zero_terminal_snr_keeps_first_alpha_bar_zeroes_last_and_snr_decreases(betas):
    rescaled = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(betas))
    original = DiffusionSchedule.from_betas(betas)
    np.testing.assert_allclose(rescaled.alphas_cumprod[0], original.alphas_cumprod[0], rtol=1e-12)
    assert rescaled.alphas_cumprod[-1] == 0 and rescaled.betas[-1] == 1
    assert np.all(np.diff(rescaled.snr) < 0)


def test_zero_terminal_snr_that_rounds_a_beta_to_one_before_the_last_step_raises():
    # found by Hypothesis (T = 2146, last β = 1.6e-10 after β = 0.038): the rescaled α' at the
    # second-to-last step is ~1e-32, so β' = 1 - α' rounds to 1 where only the last may be 1
    with pytest.raises(ValueError, match="before the last step"):
        rescale_zero_terminal_snr(np.append(np.full(10, 0.3), 1e-12))


def test_zero_terminal_snr_of_linear_1000_matches_lin_et_al():
    rescaled = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))
    assert rescaled.snr[-1] == 0 and rescaled.alphas_cumprod[-2] > 0
    # Lin et al. (2024) Fig. 2: the rescaled √ᾱ is the original shifted and scaled (affine)
    original = np.sqrt(np.cumprod(1 - linear_betas(1000)))
    slope = np.polyfit(original, rescaled.sqrt_alphas_cumprod, 1)
    np.testing.assert_allclose(np.polyval(slope, original), rescaled.sqrt_alphas_cumprod,
                               atol=1e-12)


@given(random_betas())
def test_validate_betas_returns_an_equal_float64_copy(betas):
    checked = validate_betas(betas)
    assert checked.dtype == np.float64 and checked is not betas
    np.testing.assert_array_equal(checked, betas)


def test_validate_betas_accepts_lists_and_float32():
    checked = validate_betas(np.array([0.1, 0.2], dtype=np.float32))
    np.testing.assert_array_equal(checked, np.float32([0.1, 0.2]).astype(np.float64))
    np.testing.assert_array_equal(validate_betas([0.5, 1.0]), [0.5, 1.0])


@example(T=1)
@given(st.integers(1, MAX_T))
def test_every_named_schedule_is_valid_for_every_T(T):
    for name in ("linear", "cosine", "sigmoid"):
        assert DiffusionSchedule.from_betas(make_betas(name, T)).num_timesteps == T
