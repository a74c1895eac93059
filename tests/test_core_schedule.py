"""The DiffusionSchedule tables: each test is named after the identity it proves."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from test_core_strategies import schedules, small_betas

from diffusion_core import DiffusionSchedule, linear_betas, rescale_zero_terminal_snr

HO = DiffusionSchedule.from_betas(linear_betas(1000))  # Ho et al. (2020): T = 1000, 1e-4..0.02
TABLES = [f.name for f in dataclasses.fields(DiffusionSchedule)]


@given(schedules())
def test_alphas_cumprod_is_exactly_cumprod_of_one_minus_betas(schedule):
    np.testing.assert_array_equal(schedule.alphas_cumprod, np.cumprod(1 - schedule.betas))


def test_alphas_cumprod_of_ho_et_al_ends_near_4e_5():
    np.testing.assert_allclose(HO.alphas_cumprod[-1], 4.0358e-5, rtol=1e-4)
    assert HO.alphas_cumprod[0] == 1 - 1e-4


@given(schedules())
def test_alphas_cumprod_strictly_decreases_inside_unit_interval(schedule):
    ab = schedule.alphas_cumprod
    assert np.all(np.diff(ab) < 0) and ab[0] < 1
    assert ab[-1] > 0 if schedule.betas[-1] < 1 else ab[-1] == 0


@given(schedules())
def test_alphas_cumprod_prev_is_alphas_cumprod_shifted_with_leading_one(schedule):
    np.testing.assert_array_equal(schedule.alphas_cumprod_prev,
                                  np.concatenate([[1.0], schedule.alphas_cumprod[:-1]]))


def test_ho_et_al_tables_at_the_first_two_steps():
    b0, b1 = HO.betas[:2]
    assert HO.alphas_cumprod_prev[0] == 1 and HO.alphas_cumprod_prev[1] == 1 - b0
    np.testing.assert_allclose(HO.posterior_variance[1], b1 * b0 / (b0 + b1 - b0 * b1),
                               rtol=1e-14)
    np.testing.assert_allclose(HO.snr[0], (1 - b0) / b0, rtol=1e-12)


@given(schedules())
def test_posterior_variance_is_at_most_beta(schedule):
    assert np.all(schedule.posterior_variance <= schedule.betas)
    assert np.all(schedule.posterior_variance[1:] > 0)


@given(schedules(min_T=2))
def test_posterior_variance_first_is_zero_and_its_log_is_clipped_to_the_second(schedule):
    assert schedule.posterior_variance[0] == 0
    assert schedule.posterior_log_variance_clipped[0] == np.log(schedule.posterior_variance[1])
    np.testing.assert_array_equal(schedule.posterior_log_variance_clipped[1:],
                                  np.log(schedule.posterior_variance[1:]))


def test_posterior_log_variance_with_one_step_is_log_beta():
    schedule = DiffusionSchedule.from_betas([0.3])
    assert schedule.posterior_variance[0] == 0
    assert schedule.posterior_log_variance_clipped[0] == np.log(0.3)


@given(schedules())
def test_posterior_coef1_plus_coef2_sqrt_alpha_bar_is_sqrt_alpha_bar_prev(schedule):
    lhs = schedule.posterior_mean_coef1 + schedule.posterior_mean_coef2 * np.sqrt(
        schedule.alphas_cumprod)
    np.testing.assert_allclose(lhs, np.sqrt(schedule.alphas_cumprod_prev), rtol=1e-12)


@given(schedules())
def test_posterior_coef2_squared_noise_plus_posterior_variance_is_one_minus_alpha_bar_prev(
        schedule):
    one_minus = schedule.sqrt_one_minus_alphas_cumprod**2  # 1 - ᾱ at full relative precision
    lhs = schedule.posterior_mean_coef2**2 * one_minus + schedule.posterior_variance
    np.testing.assert_allclose(lhs, np.append(0.0, one_minus[:-1]), rtol=1e-12)


@given(small_betas())
def test_one_minus_alpha_bar_has_full_relative_precision_against_exact_fractions(betas):
    schedule = DiffusionSchedule.from_betas(betas)
    exact = 1 - np.cumprod([Fraction(1) - Fraction(b) for b in betas])  # exact rationals
    np.testing.assert_allclose(schedule.sqrt_one_minus_alphas_cumprod**2,
                               exact.astype(np.float64), rtol=1e-14)


def test_posterior_coefficient_identities_on_ho_et_al():
    lhs = HO.posterior_mean_coef1 + HO.posterior_mean_coef2 * HO.sqrt_alphas_cumprod
    np.testing.assert_allclose(lhs, np.sqrt(HO.alphas_cumprod_prev), rtol=1e-14)


@given(schedules())
def test_snr_is_alpha_bar_over_one_minus_alpha_bar_and_strictly_decreases(schedule):
    np.testing.assert_allclose(schedule.snr, schedule.alphas_cumprod
                               / schedule.sqrt_one_minus_alphas_cumprod**2, rtol=1e-14)
    assert np.all(np.diff(schedule.snr) < 0)


@given(schedules())
def test_tables_are_read_only_float64_of_shape_T_and_finite_but_reciprocals_at_zero_snr(schedule):
    T = schedule.num_timesteps
    for name in TABLES:
        table = getattr(schedule, name)
        assert table.dtype == np.float64 and table.shape == (T,) and not table.flags.writeable
        finite = np.isfinite(table)
        if name.startswith("sqrt_recip"):
            finite |= schedule.alphas_cumprod == 0
        assert np.all(finite), name


def test_zero_terminal_snr_stores_inf_only_in_the_reciprocal_tables():
    schedule = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(10)))
    assert schedule.sqrt_recip_alphas_cumprod[-1] == np.inf
    assert schedule.sqrt_recipm1_alphas_cumprod[-1] == np.inf
    assert schedule.posterior_mean_coef2[-1] == 0 and schedule.snr[-1] == 0


def test_schedule_is_frozen_and_its_arrays_are_read_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HO.betas = np.zeros(3)
    with pytest.raises(ValueError, match="read-only"):
        HO.alphas_cumprod[0] = 0.5
    assert repr(HO) == "DiffusionSchedule(num_timesteps=1000)"


def test_schedule_copies_the_betas_it_is_given():
    betas = linear_betas(10)
    schedule = DiffusionSchedule.from_betas(betas)
    betas[0] = 0.5
    assert schedule.betas[0] == 1e-4
