"""Forward process, posterior and x0 ↔ ε ↔ v conversions: each test names its identity."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from test_core_strategies import MAX_T, batches, named_schedules, schedules

from diffusion_core import (
    DiffusionSchedule,
    linear_betas,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    rescale_zero_terminal_snr,
    v_target,
)

HO = DiffusionSchedule.from_betas(linear_betas(1000))
U = 2.0**-52  # float64 unit roundoff (×2)


@given(schedules(), st.data())
def test_q_sample_at_index_zero_is_sqrt_one_minus_beta_x0_plus_sqrt_beta_noise(schedule, data):
    x0, noise, _ = data.draw(batches(schedule))
    beta = schedule.betas[0]
    np.testing.assert_allclose(q_sample(schedule, x0, 0, noise),
                               np.sqrt(1 - beta) * x0 + np.sqrt(beta) * noise, rtol=4 * U,
                               atol=4 * U)


def test_q_sample_of_ho_et_al_at_the_first_step():
    xt = q_sample(HO, np.ones((2, 3)), np.array([0, 0]), np.zeros((2, 3)))
    np.testing.assert_allclose(xt, np.sqrt(1 - 1e-4), rtol=1e-15)
    assert xt.shape == (2, 3) and xt.dtype == np.float64


# 20 000 draws: the sample mean's standard error is √((1-ᾱ)/n) ≤ 0.0071, so 5 standard errors
# bound it with failure probability < 1e-6; the sample variance's standard error is (1-ᾱ)·√(2/n).
# The KS test runs at level 1e-4. The noise comes from a fixed-seed generator, so the outcome
# is deterministic.
N_DRAWS = 20_000


@given(named_schedules(), st.data(), st.floats(-1, 1), st.integers(0, 2**32 - 1))
def test_q_sample_marginal_has_mean_sqrt_alpha_bar_x0_and_variance_one_minus_alpha_bar(
        schedule, data, x0, seed):
    t = data.draw(st.integers(0, schedule.num_timesteps - 1))
    noise = np.random.default_rng(seed).standard_normal(N_DRAWS)
    xt = q_sample(schedule, np.full(N_DRAWS, x0), t, noise)
    mean, var = schedule.sqrt_alphas_cumprod[t] * x0, 1 - schedule.alphas_cumprod[t]
    assert abs(xt.mean() - mean) < 5 * np.sqrt(var / N_DRAWS)
    assert abs(xt.var() - var) < 5 * var * np.sqrt(2 / N_DRAWS)
    assert stats.kstest(xt, stats.norm(mean, np.sqrt(var)).cdf).pvalue > 1e-4


@given(schedules(), st.data(), st.floats(-1, 1))
def test_chained_one_step_kernels_equal_the_closed_form_marginal(schedule, data, x0):
    T = schedule.num_timesteps
    s = data.draw(st.integers(0, T - 1))
    t = data.draw(st.integers(s, min(T - 1, s + 400)))  # ≤ 400 chained steps keeps it fast
    mean, var, _ = q_mean_variance(schedule, x0, s)  # q(x_s | x0)
    for j in range(s + 1, t + 1):  # q(x_j | x_{j-1}) = N(√α_j x_{j-1}, β_j): Ho et al. eq. 2
        mean, var = np.sqrt(schedule.alphas[j]) * mean, schedule.alphas[j] * var + schedule.betas[j]
    closed = q_mean_variance(schedule, x0, t)
    # each chained step adds ≤ 3 roundings; both sides are sums/products of positive terms
    np.testing.assert_allclose(mean, closed.mean, rtol=4 * (t - s + 2) * U, atol=1e-300)
    np.testing.assert_allclose(var, closed.variance, rtol=4 * (t - s + 2) * U)


def test_two_step_composition_on_ho_et_al():
    mean, var, _ = q_mean_variance(HO, 0.5, 10)
    closed = q_mean_variance(HO, 0.5, 11)
    np.testing.assert_allclose(np.sqrt(HO.alphas[11]) * mean, closed.mean, rtol=1e-14)
    np.testing.assert_allclose(HO.alphas[11] * var + HO.betas[11], closed.variance, rtol=1e-13)


def _product_of_gaussians(schedule, x0, xt, t):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1})·q(x_{t-1} | x0) for t ≥ 1 by Bayes' rule: as a
    function of x_{t-1} the first factor is N(x_t/√α, β/α), the second N(√ᾱ_{t-1}x0, 1-ᾱ_{t-1});
    the product's precision is the sum of precisions, its mean the precision-weighted mean."""
    alpha, beta = 1 - schedule.betas[t], schedule.betas[t]
    ab_prev = np.cumprod(1 - schedule.betas)[t - 1]
    var_prev = schedule.sqrt_one_minus_alphas_cumprod[t - 1] ** 2  # 1 - ᾱ_{t-1}, full precision
    precision = alpha / beta + 1 / var_prev
    return (np.sqrt(alpha) * xt / beta + np.sqrt(ab_prev) * x0 / var_prev) / precision, 1 / precision


@given(schedules(min_T=2), st.data())
def test_posterior_equals_the_bayes_rule_product_of_gaussians(schedule, data):
    x0, xt, _ = data.draw(batches(schedule, batch=1))
    t = data.draw(st.integers(1, schedule.num_timesteps - 1))
    mean, var, _ = q_posterior_mean_variance(schedule, x0, xt, t)
    bayes_mean, bayes_var = _product_of_gaussians(schedule, x0, xt, t)
    np.testing.assert_allclose(mean, bayes_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, np.broadcast_to(bayes_var, var.shape), rtol=1e-12)


def test_posterior_equals_the_schur_complement_of_the_joint_gaussian():
    t, x0, xt = 500, 0.3, -0.7
    alpha, beta, ab_prev = HO.alphas[t], HO.betas[t], HO.alphas_cumprod[t - 1]
    # (x_{t-1}, x_t) | x0 is jointly Gaussian: Var x_{t-1} = 1-ᾱ_{t-1}, Cov = √α(1-ᾱ_{t-1}),
    # Var x_t = α(1-ᾱ_{t-1}) + β; condition x_{t-1} on x_t
    var_prev, cov = 1 - ab_prev, np.sqrt(alpha) * (1 - ab_prev)
    var_t = alpha * var_prev + beta
    mean = np.sqrt(ab_prev) * x0 + cov / var_t * (xt - np.sqrt(alpha * ab_prev) * x0)
    got = q_posterior_mean_variance(HO, x0, xt, t)
    np.testing.assert_allclose([got.mean, got.variance], [mean, var_prev - cov**2 / var_t],
                               rtol=1e-10)


@given(schedules(), st.data())
def test_posterior_at_index_zero_is_the_point_mass_at_x0(schedule, data):
    x0, xt, _ = data.draw(batches(schedule))
    mean, var, log_var = q_posterior_mean_variance(schedule, x0, xt, 0)
    np.testing.assert_allclose(mean, x0, rtol=1e-9, atol=1e-15)
    assert np.all(var == 0) and np.all(np.isfinite(log_var))


def _conditioning(schedule, t):
    """Error amplification of x0 ↔ ε: dividing by √ᾱ_t or √(1-ᾱ_t)."""
    return 1 + 1 / np.sqrt(schedule.alphas_cumprod[t]) + 1 / np.sqrt(
        1 - schedule.alphas_cumprod[t])


@given(schedules(), st.data())
def test_x0_to_eps_to_x0_round_trips_to_1e_12_times_its_conditioning(schedule, data):
    x0, noise, t = data.draw(batches(schedule))
    keep = schedule.alphas_cumprod[t] > 0  # ε carries no x0 where ᾱ = 0 (tested elsewhere)
    x0, noise, t = x0[keep], noise[keep], t[keep]
    xt = q_sample(schedule, x0, t, noise)
    back = predict_x0_from_eps(schedule, xt, t, predict_eps_from_x0(schedule, xt, t, x0))
    np.testing.assert_allclose(back, x0, atol=1e-12 * _conditioning(schedule, t).max(initial=1))


def test_x0_eps_round_trip_on_ho_et_al_is_within_1e_12():
    rng = np.random.default_rng(0)
    x0, noise, t = rng.uniform(-1, 1, (1000, 4)), rng.standard_normal((1000, 4)), np.arange(1000)
    xt = q_sample(HO, x0, t, noise)
    np.testing.assert_allclose(predict_x0_from_eps(HO, xt, t, noise), x0, atol=1e-12)
    np.testing.assert_allclose(predict_eps_from_x0(HO, xt, t, x0), noise, atol=1e-12)


@given(schedules(), st.data())
def test_v_conversions_round_trip_to_1e_12(schedule, data):
    x0, noise, t = data.draw(batches(schedule))
    xt, v = q_sample(schedule, x0, t, noise), v_target(schedule, x0, t, noise)
    np.testing.assert_allclose(predict_x0_from_v(schedule, xt, t, v), x0, atol=1e-12)
    np.testing.assert_allclose(predict_eps_from_v(schedule, xt, t, v), noise, atol=1e-12)


@given(schedules(), st.data())
def test_v_is_a_rotation_of_x0_and_eps_preserving_norm(schedule, data):
    x0, noise, t = data.draw(batches(schedule))
    xt, v = q_sample(schedule, x0, t, noise), v_target(schedule, x0, t, noise)
    np.testing.assert_allclose(xt**2 + v**2, x0**2 + noise**2, rtol=1e-12, atol=1e-12)


def test_v_target_at_zero_terminal_snr_is_minus_x0_and_x0_is_minus_v():
    zt = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(MAX_T)))
    x0, noise, last = np.array([0.25, -0.5]), np.array([1.5, 0.1]), MAX_T - 1
    v = v_target(zt, x0, last, noise)
    np.testing.assert_array_equal(v, -x0)
    np.testing.assert_array_equal(predict_x0_from_v(zt, noise, last, v), x0)


@given(schedules(), st.data())
def test_scalar_t_equals_a_batch_of_that_t(schedule, data):
    x0, noise, t = data.draw(batches(schedule))
    np.testing.assert_array_equal(q_sample(schedule, x0, t[0], noise),
                                  q_sample(schedule, x0, np.full(len(x0), t[0]), noise))


def test_t_of_shape_B_broadcasts_over_trailing_axes_and_a_shared_x0():
    x0 = np.linspace(-1, 1, 12).reshape(1, 3, 2, 2)  # one image, broadcast over the batch
    t = np.array([0, 999])
    xt = q_sample(HO, x0, t, np.zeros((2, 3, 2, 2)))
    assert xt.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(xt[1], HO.sqrt_alphas_cumprod[999] * x0[0], rtol=1e-15)
    moments = q_mean_variance(HO, x0[0], np.int64(3))
    assert moments.variance.shape == (3, 2, 2) and moments.variance.dtype == np.float64
