"""Gaussian KL, the discretised decoder likelihood and the variational-bound terms."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats
from test_core_strategies import batches, schedules

from diffusion_core import (
    DiffusionSchedule,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    linear_betas,
    nats_to_bits_per_dim,
    normal_kl,
    prior_kl,
    q_posterior_mean_variance,
    q_sample,
    vb_term,
)

HO = DiffusionSchedule.from_betas(linear_betas(1000))
LEVELS = np.arange(256) / 127.5 - 1.0  # the 256 values of 8-bit data on [-1, 1]
means = st.floats(-3, 3)  # a model mean may leave the data range [-1, 1]
log_vars = st.floats(-6, 3)  # standard deviations from 0.05 to 4.5: quad stays accurate


@given(means, log_vars, means, log_vars)
def test_normal_kl_equals_the_numerical_integral_of_p_log_p_over_q(m1, lv1, m2, lv2):
    p, q = stats.norm(m1, math.exp(lv1 / 2)), stats.norm(m2, math.exp(lv2 / 2))
    lo, hi = m1 - 12 * p.std(), m1 + 12 * p.std()  # p has no mass beyond 12σ in float64
    integral, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi,
                                 limit=200)
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2), integral, rtol=1e-6, atol=1e-8)


def test_normal_kl_of_equal_gaussians_is_zero_and_of_shifted_unit_gaussians_is_half_squared():
    assert normal_kl(0.3, -1.0, 0.3, -1.0) == 0
    np.testing.assert_allclose(normal_kl(np.array([0.0, 2.0]), 0.0, 0.0, 0.0), [0.0, 2.0])


def test_normal_kl_stays_finite_where_a_variance_underflows():
    assert normal_kl(0.0, 0.0, 0.0, -800.0) == np.inf  # a true infinity, not NaN
    assert np.isfinite(normal_kl(1.0, -800.0, 1.0, 0.0))


@given(st.integers(0, 2**32 - 1), st.floats(-5, 1))
def test_discretized_log_likelihood_sums_to_one_over_the_256_bins(seed, log_scale_centre):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-1.5, 1.5, (3, 1))  # three Gaussians, each against all 256 levels
    log_scales = log_scale_centre + rng.uniform(-1, 1, (3, 1))
    probs = np.exp(discretized_gaussian_log_likelihood(LEVELS, mean, log_scales))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_discretized_log_likelihood_of_a_narrow_gaussian_on_its_level_is_near_zero():
    # σ = 5e-4: the bin edges at ±1/255 are 7.8σ away, leaving a mass of 1 - 1e-14 inside
    logp = discretized_gaussian_log_likelihood(LEVELS[100], LEVELS[100], np.log(5e-4))
    assert -1e-9 < logp <= 0
    assert discretized_gaussian_log_likelihood(-1.0, 5.0, 0.0) > -30  # edge bin to -inf
    assert discretized_gaussian_log_likelihood(0.0, 0.0, -800.0) == 0.0  # never NaN


@given(st.floats(-10, 10))
def test_approx_standard_normal_cdf_is_within_2e_4_of_the_normal_cdf(x):
    assert abs(approx_standard_normal_cdf(x) - stats.norm.cdf(x)) < 2e-4


def test_approx_standard_normal_cdf_is_odd_about_one_half():
    x = np.linspace(-4, 4, 81)
    np.testing.assert_allclose(approx_standard_normal_cdf(x) + approx_standard_normal_cdf(-x), 1)


@given(schedules(min_T=2), st.data())
def test_vb_term_is_zero_for_the_true_posterior_at_every_step_after_the_first(schedule, data):
    x0, noise, t = data.draw(batches(schedule))
    t = np.maximum(t, 1)
    xt = q_sample(schedule, x0, t, noise)
    mean, _, log_var = q_posterior_mean_variance(schedule, x0, xt, t)
    np.testing.assert_allclose(vb_term(schedule, x0, xt, t, mean, log_var), 0.0, atol=1e-9)


@given(schedules(), st.data())
def test_vb_term_at_index_zero_is_the_discretized_decoder_nll(schedule, data):
    x0, noise, _ = data.draw(batches(schedule))
    x0 = np.round((x0 + 1) * 127.5) / 127.5 - 1  # 8-bit levels
    mean, log_var = x0 + 0.01 * noise, np.full(x0.shape, -7.0)
    expected = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    got = vb_term(schedule, x0, q_sample(schedule, x0, 0, noise), np.zeros(len(x0), np.int64),
                  mean, log_var)
    np.testing.assert_allclose(got, expected, rtol=1e-15)


@given(schedules(), st.data())
def test_prior_kl_is_the_kl_of_q_x_T_given_x0_from_the_standard_normal(schedule, data):
    x0, _, _ = data.draw(batches(schedule))
    ab = schedule.alphas_cumprod[-1]
    log_one_minus = 2 * np.log(schedule.sqrt_one_minus_alphas_cumprod[-1])  # full precision
    expected = 0.5 * (-log_one_minus - ab + ab * x0**2)  # closed form against N(0, 1)
    np.testing.assert_allclose(prior_kl(schedule, x0), expected, rtol=1e-9, atol=1e-15)


def test_prior_kl_keeps_full_precision_for_one_tiny_beta():
    # found by Hypothesis: with T = 1, 1 - ᾱ = β exactly; computing it as 1 - (1 - β) lost 7 digits
    beta, x0 = 6e-10, 0.27392337
    expected = 0.5 * (-np.log(beta) - (1 - beta) + (1 - beta) * x0**2)
    np.testing.assert_allclose(prior_kl(DiffusionSchedule.from_betas([beta]), x0), expected,
                               rtol=1e-14)


def test_prior_kl_of_ho_et_al_is_about_1e_5_bits_per_dim():
    x0 = np.ones((2, 1, 4, 4))
    bpd = nats_to_bits_per_dim(prior_kl(HO, x0))
    assert bpd.shape == (2,) and np.all((bpd > 0) & (bpd < 1e-4))


def test_nats_to_bits_per_dim_averages_non_batch_axes_over_ln_2():
    nats = np.stack([np.full((3, 2), math.log(2)), np.full((3, 2), 2 * math.log(2))])
    np.testing.assert_allclose(nats_to_bits_per_dim(nats), [1.0, 2.0])
    np.testing.assert_allclose(nats_to_bits_per_dim(np.array([math.log(2)])), [1.0])
