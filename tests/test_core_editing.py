"""The math of editing (diffusion_core.editing): each test is named after the property it proves."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_core_strategies import named_schedules

import diffusion_core as core
from diffusion_core.editing import ddim_inversion_coefficients, q_jump_mean_variance, slerp

LINEAR = core.DiffusionSchedule.from_betas(core.linear_betas(1000))


def chain(coeffs, x, denoiser):
    """The core's reverse_step run over a table (decoding, or inversion: the same form)."""
    for k in range(coeffs.num_steps):
        abar = coeffs.sqrt_alphas_cumprod[k] ** 2
        x = core.reverse_step(coeffs, k, x, denoiser(x, abar), None, "x0", False).x_prev
    return x


def round_trip(x0, K, denoiser):
    steps = core.select_timesteps(1000, K, "linspace")  # τ_0 = 0: the image is taken as x at τ_0
    latent = chain(ddim_inversion_coefficients(LINEAR, steps), x0, denoiser)
    return latent, chain(core.ddim_coefficients(LINEAR, steps), latent, denoiser)


def test_the_inversion_table_is_ddim_run_upwards():
    steps = core.select_timesteps(1000, 10, "trailing")
    inv = ddim_inversion_coefficients(LINEAR, steps)
    np.testing.assert_array_equal(inv.timesteps, steps[:-1])
    np.testing.assert_array_equal(inv.x0_coef, LINEAR.sqrt_alphas_cumprod[steps[1:]])
    np.testing.assert_array_equal(inv.eps_coef, LINEAR.sqrt_one_minus_alphas_cumprod[steps[1:]])
    np.testing.assert_array_equal(inv.sqrt_alphas_cumprod, LINEAR.sqrt_alphas_cumprod[steps[:-1]])
    assert np.all(inv.sigma == 0) and inv.num_steps == 9
    with pytest.raises(ValueError, match="at least 2"):
        ddim_inversion_coefficients(LINEAR, [5])


@pytest.mark.parametrize("K", [2, 10, 50])
def test_inversion_then_decoding_round_trips_a_point_mass_to_float_tolerance(K):
    """With the exact denoiser of a one-image data set (x̂0 = that image), ε̂ is the same at every
    step, inversion is exact and decoding undoes it."""
    x0 = np.random.default_rng(0).uniform(-1, 1, (3, 1, 4, 4))
    latent, back = round_trip(x0, K, lambda x, abar: x0)
    np.testing.assert_allclose(back, x0, rtol=0, atol=1e-10)
    assert np.abs(latent - x0).max() > 0.1  # it did go somewhere


def test_inversion_round_trip_error_on_gaussian_data_falls_as_the_steps_grow():
    mean, std = 0.3, 0.5

    def denoiser(x, abar):  # E[x0 | x_t] for x0 ~ N(μ, s²)
        a = np.sqrt(abar)
        return mean + a * std**2 / (abar * std**2 + 1 - abar) * (x - a * mean)

    x0 = np.random.default_rng(1).normal(mean, std, 64)
    Ks = [10, 20, 50, 100]
    errors = [np.abs(round_trip(x0, K, denoiser)[1] - x0).max() for K in Ks]
    assert np.all(np.diff(errors) < 0), errors
    assert -np.polyfit(np.log(Ks), np.log(errors), 1)[0] > 0.8, errors  # first order, as DDIM


def test_slerp_keeps_the_end_points_and_the_norm_of_gaussian_latents():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 4, 784))
    frames = slerp(a, b, np.linspace(0, 1, 9))
    assert frames.shape == (9, 4, 784)
    np.testing.assert_allclose(frames[0], a, atol=1e-12)
    np.testing.assert_allclose(frames[-1], b, atol=1e-12)
    norms = np.linalg.norm(frames, axis=-1) / np.sqrt(784)
    assert np.all(np.abs(norms - 1) < 0.08)  # |a|/√D and |b|/√D are 1 ± 0.05 here
    lerp_mid = np.linalg.norm((a + b) / 2, axis=-1) / np.sqrt(784)
    assert np.all(lerp_mid < 0.8)  # the straight line's middle shrinks to ≈ 1/√2


@given(st.floats(0, 1), st.floats(0.1, 10))
def test_slerp_between_equal_orthogonal_vectors_stays_on_their_circle(t, r):
    a, b = np.array([r, 0.0, 0.0]), np.array([0.0, r, 0.0])
    out = slerp(a, b, t)
    assert np.linalg.norm(out) == pytest.approx(r, rel=1e-12)
    assert np.arctan2(out[1], out[0]) == pytest.approx(t * np.pi / 2, abs=1e-12)  # uniform in angle


def test_slerp_of_parallel_vectors_is_the_straight_line_and_zero_is_refused():
    a = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(slerp(a, 3 * a, 0.25), 1.5 * a, rtol=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        slerp(a, np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, np.ones(4), 0.5)
    for t in (np.nan, np.ones((2, 2))):
        with pytest.raises(ValueError, match="t must be"):
            slerp(a, 2 * a, t)


@given(named_schedules(min_T=3, zero_terminal_snr=False), st.data())
def test_two_forward_jumps_compose_to_one(schedule, data):
    """q(x_u | x_s) = ∫ q(x_u | x_t) q(x_t | x_s) dx_t: the means' coefficients multiply and the
    variances add as c_tu²·v_st + v_tu (the Gaussian chain rule)."""
    T = schedule.num_timesteps
    s = data.draw(st.integers(-1, T - 3))
    t = data.draw(st.integers(s + 1, T - 2))
    u = data.draw(st.integers(t + 1, T - 1))
    one = np.ones(2)
    st_, tu, su = (q_jump_mean_variance(schedule, one, *p) for p in ((s, t), (t, u), (s, u)))
    np.testing.assert_allclose(su.mean, st_.mean * tu.mean, rtol=1e-12)
    np.testing.assert_allclose(su.variance, tu.mean**2 * st_.variance + tu.variance, rtol=1e-10)


@given(named_schedules(), st.data())
def test_a_jump_from_x0_is_q_of_x_t_given_x0(schedule, data):
    t = data.draw(st.integers(0, schedule.num_timesteps - 1))
    x0 = np.linspace(-1, 1, 5)
    jump, q = q_jump_mean_variance(schedule, x0, -1, t), core.q_mean_variance(schedule, x0, t)
    np.testing.assert_allclose(jump.mean, q.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jump.variance, q.variance, rtol=1e-10)
    assert jump.variance.dtype == np.float64 and jump.mean.shape == x0.shape


def test_a_jump_needs_s_before_t_inside_the_schedule():
    for s, t in ((3, 3), (5, 2), (-2, 4), (0, 1000), (1.5, 4)):
        with pytest.raises(ValueError, match="s <"):
            q_jump_mean_variance(LINEAR, np.zeros(2), s, t)
