"""Respacing, DDPM and DDIM reverse steps: each test is named after the identity it proves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_core_strategies import MAX_T, batches, named_schedules, schedules

from diffusion_core import (
    DiffusionSchedule,
    ddim_coefficients,
    ddpm_coefficients,
    linear_betas,
    q_posterior_mean_variance,
    q_sample,
    rescale_zero_terminal_snr,
    respace,
    reverse_step,
    select_timesteps,
    v_target,
)

HO = DiffusionSchedule.from_betas(linear_betas(1000))
ZT = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))
SPACINGS = ["leading", "trailing", "linspace"]
PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 97, 101, 997]
U = 2.0**-52


@st.composite
def step_lists(draw, schedule):
    """(spacing, K, ascending indices): K a prime, any K ≤ T (mostly not dividing T) or T."""
    T = schedule.num_timesteps
    K = draw(st.one_of(st.sampled_from([p for p in PRIMES if p <= T] or [1]),
                       st.integers(1, T), st.just(T)))
    spacing = draw(st.sampled_from(SPACINGS))
    return spacing, K, select_timesteps(T, K, spacing)


@given(st.integers(1, MAX_T), st.data())
def test_select_timesteps_are_K_distinct_ascending_int64_indices_in_range(T, data):
    spacing, K, steps = data.draw(step_lists(DiffusionSchedule.from_betas(linear_betas(T, 1e-4,
                                                                                        1e-3))))
    assert steps.dtype == np.int64 and steps.shape == (K,)
    assert np.all(np.diff(steps) > 0) and steps[0] >= 0 and steps[-1] <= T - 1


@given(st.integers(1, MAX_T), st.data(), st.sampled_from(["trailing", "linspace"]))
def test_trailing_and_linspace_start_sampling_at_the_last_step(T, data, spacing):
    K = data.draw(st.integers(1, T))
    assert select_timesteps(T, K, spacing)[-1] == T - 1


def test_select_timesteps_match_lin_et_al_table_2():
    # Lin et al. (2024) Table 2 lists 1-based steps for T = 1000, K = 10; ours are 0-based
    np.testing.assert_array_equal(select_timesteps(1000, 10, "leading"), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(select_timesteps(1000, 10, "trailing"), np.arange(99, 1000, 100))
    np.testing.assert_array_equal(select_timesteps(1000, 10, "linspace"),
                                  np.round(np.linspace(0, 999, 10)))
    np.testing.assert_array_equal(select_timesteps(7, 7, "trailing"), np.arange(7))


@given(named_schedules(), st.data())
def test_previous_alpha_bar_is_the_one_at_the_next_entry_of_the_step_list(schedule, data):
    _, K, steps = data.draw(step_lists(schedule))
    for coeffs in (ddim_coefficients(schedule, steps), ddpm_coefficients(schedule, steps)):
        expected_prev = np.append(schedule.sqrt_alphas_cumprod[coeffs.timesteps[1:]], 1.0)
        np.testing.assert_array_equal(coeffs.x0_coef, expected_prev)  # A = √ᾱ_prev
        np.testing.assert_array_equal(coeffs.sqrt_alphas_cumprod,
                                      schedule.sqrt_alphas_cumprod[coeffs.timesteps])


def test_previous_step_of_trailing_7_of_1000_is_not_t_minus_T_over_K():
    steps = select_timesteps(1000, 7, "trailing")  # [142, 285, 428, 570, 713, 856, 999]
    coeffs = ddim_coefficients(HO, steps)
    assert 999 - 1000 // 7 == 857 and coeffs.timesteps[1] == 856
    assert coeffs.x0_coef[0] == HO.sqrt_alphas_cumprod[856]


@given(schedules())
def test_respacing_all_steps_returns_the_original_betas(schedule):
    all_steps = np.arange(schedule.num_timesteps)
    np.testing.assert_array_equal(respace(schedule, all_steps).betas, schedule.betas)


@given(schedules(), st.data())
def test_respaced_alphas_cumprod_equal_the_original_at_kept_steps(schedule, data):
    _, K, steps = data.draw(step_lists(schedule))
    respaced = respace(schedule, steps)
    kept = respaced.alphas > 0  # ᾱ' = ᾱ = 0 exactly at a zero-terminal-SNR last step
    # tolerance: K products and up to T log1p/expm1 terms, each within a few u, and each
    # α' = 1 - β' carries the rounding of β' relative to α' (large where β' ≈ 1)
    rtol = 8 * U * (K + schedule.num_timesteps + np.sum(1 / respaced.alphas[kept]))
    np.testing.assert_allclose(respaced.alphas_cumprod, schedule.alphas_cumprod[steps],
                               rtol=rtol, atol=0)


def test_respacing_ho_et_al_to_50_steps_keeps_alpha_bar():
    steps = select_timesteps(1000, 50, "linspace")
    np.testing.assert_allclose(respace(HO, steps).alphas_cumprod, HO.alphas_cumprod[steps],
                               rtol=1e-13)


@given(schedules(), st.data())
def test_coefficients_give_the_network_the_original_timesteps_in_sampling_order(schedule, data):
    _, _, steps = data.draw(step_lists(schedule))
    np.testing.assert_array_equal(ddim_coefficients(schedule, steps).timesteps, steps[::-1])
    np.testing.assert_array_equal(ddpm_coefficients(schedule).timesteps,
                                  np.arange(schedule.num_timesteps)[::-1])


@given(schedules(), st.data())
def test_ddim_eta_one_has_the_ddpm_posterior_variance_and_mean_coefficients(schedule, data):
    _, _, steps = data.draw(step_lists(schedule))
    for timesteps in (None, steps):
        ddim, ddpm = ddim_coefficients(schedule, timesteps, 1.0), ddpm_coefficients(schedule,
                                                                                    timesteps)
        np.testing.assert_allclose(ddim.sigma**2, ddpm.sigma**2, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(ddim.eps_coef, ddpm.eps_coef, rtol=1e-9, atol=1e-300)
        np.testing.assert_array_equal(ddim.x0_coef, ddpm.x0_coef)


@given(schedules(), st.data(), st.floats(0, 1))
def test_ddim_eps_coef_squared_plus_sigma_squared_is_one_minus_alpha_bar_prev(schedule, data,
                                                                               eta):
    _, _, steps = data.draw(step_lists(schedule))
    coeffs = ddim_coefficients(schedule, steps, eta)
    # 1 - ᾱ at the next entry of the step list (0 after the last): the schedule's table
    one_minus_prev = np.append(schedule.sqrt_one_minus_alphas_cumprod[coeffs.timesteps[1:]], 0)**2
    np.testing.assert_allclose(coeffs.eps_coef**2 + coeffs.sigma**2, one_minus_prev, rtol=1e-12)


def test_ddim_eta_one_matches_ddpm_after_a_tiny_first_step_and_a_long_jump():
    # found by Hypothesis (steps [0, 93], ᾱ from 0.99977 to 2e-4): B = √(1-ᾱ_prev-σ²) evaluated
    # as written cancels to 9 digits; B² = (1-ᾱ_prev)((1-ᾱ_prev)α' + (1-η²)β')/(1-ᾱ_t) does not
    betas = np.append(2.28e-4, np.full(93, -np.expm1(np.log(2e-4) / 93)))
    schedule, steps = DiffusionSchedule.from_betas(betas), [0, 93]
    ddim, ddpm = ddim_coefficients(schedule, steps, 1.0), ddpm_coefficients(schedule, steps)
    np.testing.assert_allclose(ddim.eps_coef, ddpm.eps_coef, rtol=1e-13)


def test_ddim_eta_one_sigma_squared_is_beta_tilde_on_ho_et_al():
    np.testing.assert_allclose(ddim_coefficients(HO, eta=1.0).sigma[:-1] ** 2,
                               HO.posterior_variance[1:][::-1], rtol=1e-13)


def test_ddim_50_trailing_steps_on_ho_et_al_start_at_999_and_add_no_noise():
    coeffs = ddim_coefficients(HO, select_timesteps(1000, 50, "trailing"))
    np.testing.assert_array_equal(coeffs.timesteps[:3], [999, 979, 959])
    assert np.all(coeffs.sigma == 0) and coeffs.x0_coef[-1] == 1 and coeffs.eps_coef[-1] == 0
    np.testing.assert_allclose(coeffs.eps_coef[0], np.sqrt(1 - HO.alphas_cumprod[979]),
                               rtol=1e-14)


def test_ddpm_with_beta_variance_on_ho_et_al_starts_with_sigma_squared_0_02():
    coeffs = ddpm_coefficients(HO, variance="beta")
    np.testing.assert_allclose(coeffs.sigma[0] ** 2, 0.02, rtol=1e-14)
    np.testing.assert_array_equal(respace(HO, np.arange(1000)).betas, HO.betas)


@given(schedules(), st.data())
def test_ddim_eta_zero_is_deterministic(schedule, data):
    _, K, steps = data.draw(step_lists(schedule))
    coeffs = ddim_coefficients(schedule, steps, eta=0.0)
    assert np.all(coeffs.sigma == 0)
    x0, noise, _ = data.draw(batches(schedule))
    k = data.draw(st.integers(0, K - 1))
    objective = "v" if coeffs.sqrt_alphas_cumprod[k] == 0 else "eps"
    a = reverse_step(coeffs, k, x0, noise, noise, objective)
    np.testing.assert_array_equal(a.x_prev, reverse_step(coeffs, k, x0, noise, None, objective)
                                  .x_prev)


def _ddim_invert(coeffs, k, x_prev, eps):
    """DDIM eq. 12 run backwards (η = 0): x̂0 from x_prev, then x_t = √ᾱ_t x̂0 + √(1-ᾱ_t) ε."""
    x0 = (x_prev - coeffs.eps_coef[k] * eps) / coeffs.x0_coef[k]
    return coeffs.sqrt_alphas_cumprod[k] * x0 + coeffs.sqrt_one_minus_alphas_cumprod[k] * eps


@given(named_schedules(zero_terminal_snr=False), st.data(), st.integers(0, 2**32 - 1))
def test_ddim_inversion_then_sampling_recovers_x_T(schedule, data, seed):
    spacing = data.draw(st.sampled_from(SPACINGS))
    K = data.draw(st.integers(1, min(50, schedule.num_timesteps)))  # ≤ 50 steps: time
    coeffs = ddim_coefficients(schedule, select_timesteps(schedule.num_timesteps, K, spacing))
    rng = np.random.default_rng(seed)
    eps, x_T = rng.standard_normal((K, 3)), rng.standard_normal(3)  # ε̂_k: a model of k only
    x = x_T
    for k in range(K):
        x = reverse_step(coeffs, k, x, eps[k], None, clip_x0=False).x_prev
    for k in reversed(range(K)):
        x = _ddim_invert(coeffs, k, x, eps[k])
    # error: K steps, each amplified at most by 1/√ᾱ at the noisiest kept step
    np.testing.assert_allclose(x, x_T, atol=1e-13 * K / coeffs.sqrt_alphas_cumprod[0])


@example(objective="eps", pair=(0, 1), seed=0)
@given(st.sampled_from(["eps", "x0", "v"]), st.tuples(st.integers(0, 999), st.integers(0, 999)),
       st.integers(0, 2**32 - 1))
def test_ddim_with_the_true_eps_lands_on_q_sample_at_the_previous_step(objective, pair, seed):
    s, t = min(pair), max(pair)
    if s == t:
        return
    rng = np.random.default_rng(seed)
    x0, eps = rng.uniform(-1, 1, (2, 3)), rng.standard_normal((2, 3))
    coeffs = ddim_coefficients(HO, [s, t])  # sampling order: t, then s, then x0
    output = {"eps": eps, "x0": x0, "v": v_target(HO, x0, t, eps)}[objective]
    step = reverse_step(coeffs, 0, q_sample(HO, x0, t, eps), output, None, objective, False)
    np.testing.assert_allclose(step.x_prev, q_sample(HO, x0, s, eps), atol=1e-12, rtol=0)
    output = {"eps": eps, "x0": x0, "v": v_target(HO, x0, s, eps)}[objective]
    final = reverse_step(coeffs, 1, q_sample(HO, x0, s, eps), output, None, objective, False)
    np.testing.assert_allclose(final.x_prev, x0, atol=1e-12, rtol=0)


@given(schedules(min_T=2), st.data(), st.sampled_from(["eps", "x0", "v"]))
def test_ddim_with_the_true_prediction_lands_on_q_sample_on_any_schedule(schedule, data,
                                                                         objective):
    T = schedule.num_timesteps
    t = data.draw(st.integers(1, T - 1))
    s = data.draw(st.integers(0, t - 1))
    objective = "v" if objective == "eps" and schedule.alphas_cumprod[t] == 0 else objective
    x0, eps, _ = data.draw(batches(schedule))
    output = {"eps": eps, "x0": x0, "v": v_target(schedule, x0, t, eps)}[objective]
    coeffs = ddim_coefficients(schedule, [s, t])
    step = reverse_step(coeffs, 0, q_sample(schedule, x0, t, eps), output, None, objective, False)
    ab_s, ab_t = schedule.alphas_cumprod[s], schedule.alphas_cumprod[t]
    conditioning = 1 + np.sqrt(ab_s / ab_t) if objective == "eps" else 2.0  # x̂0 = (x_t - ..)/√ᾱ
    np.testing.assert_allclose(step.x_prev, q_sample(schedule, x0, s, eps),
                               atol=1e-13 * conditioning * (1 + np.abs(eps).max()))


@given(schedules(), st.data(), st.sampled_from(["eps", "x0", "v"]), st.booleans())
def test_ddpm_reverse_step_is_the_posterior_mean_at_x0_hat_plus_sigma_noise(schedule, data,
                                                                            objective, clip):
    coeffs = ddpm_coefficients(schedule)
    k = data.draw(st.integers(0, schedule.num_timesteps - 1))
    t = coeffs.timesteps[k]
    objective = "v" if objective == "eps" and schedule.alphas_cumprod[t] == 0 else objective
    xt, output, _ = data.draw(batches(schedule))
    z = np.random.default_rng(k).standard_normal(xt.shape)
    step = reverse_step(coeffs, k, xt, output, z, objective, clip)
    mean, var, _ = q_posterior_mean_variance(schedule, step.x0_pred, xt, t)
    np.testing.assert_allclose(step.x_prev, mean + np.sqrt(var) * z,
                               atol=1e-12 * (1 + np.abs(step.x0_pred).max()))


def test_ddpm_reverse_step_on_ho_et_al_at_step_500():
    coeffs = ddpm_coefficients(HO)
    xt, eps, z = np.full(4, 0.5), np.full(4, -0.25), np.full(4, 1.0)
    step = reverse_step(coeffs, 499, xt, eps, z, "eps", clip_x0=False)
    t = 500  # sampling index k = 499 is schedule index T-1-k = 500
    # Ho et al. (2020) eq. 11: μ = (x_t - β/√(1-ᾱ)·ε)/√α
    mu = (xt - HO.betas[t] / HO.sqrt_one_minus_alphas_cumprod[t] * eps) / np.sqrt(HO.alphas[t])
    np.testing.assert_allclose(step.x_prev, mu + np.sqrt(HO.posterior_variance[t]) * z,
                               rtol=1e-12)


@given(schedules(), st.data())
def test_ddpm_on_respaced_steps_is_ddpm_on_the_respaced_schedule(schedule, data):
    _, K, steps = data.draw(step_lists(schedule))
    respaced = respace(schedule, steps)
    a, b = ddpm_coefficients(schedule, steps), ddpm_coefficients(respaced)
    # the respaced schedule stores β', so its α' = 1 - β' has relative error ~u/α' (and its ᾱ
    # the cumulative K-step rounding); the coefficients from the original ᾱ do not
    kept = respaced.alphas > 0
    rtol = 8 * U * (K + schedule.num_timesteps + np.sum(1 / respaced.alphas[kept]))
    for name in ("x0_coef", "sigma", "sqrt_alphas_cumprod"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-300)
    # found by Hypothesis (T = 3152, steps [1575, 3151]): where ᾱ_t/ᾱ_prev < 2^-53, β' rounds to
    # 1 in the respaced schedule, whose B = √α'·... becomes 0; from ᾱ it stays √α'·... < 2^-26
    exact = (respaced.betas < 1)[::-1]
    np.testing.assert_allclose(a.eps_coef[exact], b.eps_coef[exact], rtol=rtol, atol=1e-300)
    assert np.all(a.eps_coef[~exact] < 2.0**-26)


@given(schedules(), st.data())
def test_ddpm_beta_variance_has_sigma_squared_beta_and_every_sampler_ends_without_noise(
        schedule, data):
    _, _, steps = data.draw(step_lists(schedule))
    coeffs = ddpm_coefficients(schedule, steps, variance="beta")
    np.testing.assert_allclose(coeffs.sigma[:-1] ** 2, respace(schedule, steps).betas[1:][::-1],
                               rtol=1e-14)
    for c in (coeffs, ddpm_coefficients(schedule, steps), ddim_coefficients(schedule, steps, 1)):
        assert c.sigma[-1] == 0


@given(schedules(), st.data())
def test_ddim_accepts_every_eta_up_to_one(schedule, data):
    _, _, steps = data.draw(step_lists(schedule))
    eta = data.draw(st.floats(0, 1))
    coeffs = ddim_coefficients(schedule, steps, eta)
    assert np.all(np.isfinite(coeffs.eps_coef)) and np.all(coeffs.eps_coef >= 0)


def test_ddim_eta_above_the_largest_valid_eta_raises_and_below_is_accepted():
    with pytest.raises(ValueError, match="largest valid eta is 1.35") as info:
        ddim_coefficients(HO, eta=2.0)
    limit = float(str(info.value).rsplit(" ", 1)[-1])
    assert np.all(ddim_coefficients(HO, eta=limit * 0.999).eps_coef >= 0)
    with pytest.raises(ValueError, match="largest valid eta is 1"):
        ddim_coefficients(ZT, eta=1.01)  # at ᾱ_T = 0, σ² = η²(1-ᾱ_prev)


def test_eps_step_at_zero_terminal_snr_raises_and_v_step_works():
    coeffs = ddim_coefficients(ZT, select_timesteps(1000, 50, "trailing"))
    xt = np.ones(3)
    with pytest.raises(ValueError, match="use the v objective"):
        reverse_step(coeffs, 0, xt, xt, None, "eps")
    step = reverse_step(coeffs, 0, xt, -0.5 * xt, None, "v")  # v = -x0 at ᾱ = 0
    np.testing.assert_array_equal(step.x0_pred, 0.5 * xt)
    assert np.all(np.isfinite(step.x_prev))


def test_reverse_step_clips_x0_and_keeps_shape_and_dtype():
    coeffs = ddpm_coefficients(HO)
    xt = np.full((2, 1, 2, 2), 30.0, dtype=np.float32)
    step = reverse_step(coeffs, 10, xt, np.zeros_like(xt), np.zeros_like(xt))
    assert step.x_prev.shape == xt.shape and step.x_prev.dtype == np.float32
    assert np.all(step.x0_pred == 1.0) and coeffs.num_steps == 1000
