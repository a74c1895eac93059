"""diffusion_core.consistency (consistency models, Song et al. 2023; ECT, Geng et al. 2024): each
test is named after the property it proves, against closed forms.

For Gaussian data x0 ~ N(μ, s²) the probability-flow ODE transports quantiles, so its flow map is
affine in closed form: the exact consistency function is f*(x_t, t) = the ODE's solution at
t_min, the same ``Gaussian.ode_end`` the solver tests converge to (tests/test_core_multistep.py).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_core_multistep import Gaussian
from test_core_strategies import named_schedules, random_betas

import diffusion_core as core
from diffusion_core.consistency import (
    consistency_coefficients,
    consistency_function,
    consistency_scalings,
    consistency_timesteps,
    consistency_weights,
    ect_pair_timesteps,
    edm_noise_levels,
    lognormal_timestep_table,
    pseudo_huber,
    pseudo_huber_scale,
    scalings_at_angles,
    vp_angles,
)

GAUSSIAN = Gaussian()


def exact_consistency(schedule, xt, t, t_min=0):
    """f*(x_t, t): the Gaussian's exact ODE flow from index t to t_min."""
    abar = schedule.alphas_cumprod
    return GAUSSIAN.ode_end(xt, abar[t], abar[t_min])


def exact_network(schedule, xt, t, t_min=0):
    """F* with c_skip·x_t + c_out·F* = f* (t > t_min)."""
    c_skip, c_out = consistency_scalings(schedule, t, t_min)
    return (exact_consistency(schedule, xt, t, t_min) - c_skip * xt) / c_out


@st.composite
def any_schedule(draw, min_T=2, max_T=1000):
    betas = draw(st.one_of(named_schedules(min_T=min_T, max_T=max_T).map(lambda s: s.betas),
                           random_betas(min_T=min_T, max_T=max_T, min_beta=1e-8)))
    return core.DiffusionSchedule.from_betas(betas)


# ---------------------------------------------------------------------------------------------
# The parameterisation


@given(any_schedule(min_T=1), st.data())
def test_the_boundary_condition_holds_exactly_for_every_schedule(schedule, data):
    t_min = data.draw(st.integers(0, schedule.num_timesteps - 1))
    c_skip, c_out = consistency_scalings(schedule, t_min, t_min)
    assert c_skip == 1.0 and c_out == 0.0
    x = np.array([[-1.0, 0.3, 0.7]])
    garbage = np.array([[5.0, -7.0, 1e6]])
    np.testing.assert_array_equal(consistency_function(schedule, x, np.array([t_min]), garbage, t_min), x)


@given(any_schedule(min_T=2), st.data())
def test_the_scalings_are_one_ddim_jump_to_t_min_with_the_network_as_its_x0(schedule, data):
    T = schedule.num_timesteps
    t_min = data.draw(st.integers(0, T - 2))
    t = np.array(data.draw(st.lists(st.integers(t_min + 1, T - 1), min_size=1, max_size=5)))
    c_skip, c_out = consistency_scalings(schedule, t, t_min)
    a, b = core.ddim_jump_coefficients(schedule, t, t_min)
    np.testing.assert_allclose(c_skip, b, rtol=1e-12)
    np.testing.assert_allclose(c_out, a, rtol=1e-9, atol=1e-15)
    assert np.all(c_out > 0) and np.all((c_skip > 0) & (c_skip < 1))


def test_far_from_t_min_the_function_is_the_networks_x0():
    """c_skip → 0 and c_out → α_min: a tuning from a diffusion model starts at its x̂0."""
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    c_skip, c_out = consistency_scalings(schedule, np.array([999]))
    assert c_skip[0] < 0.011 and abs(c_out[0] - schedule.sqrt_alphas_cumprod[0]) < 1e-4


@given(named_schedules(min_T=3, max_T=1000), st.floats(-0.5, 0.5), st.data())
def test_the_exact_gaussian_consistency_function_is_representable_and_is_the_ode_solution(schedule, mu, data):
    """F* = (f* − c_skip x)/c_out is finite, and the core's f built on it is the solver tests'
    exact ODE end point."""
    T = schedule.num_timesteps
    t = np.array(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=4)))
    xt = np.linspace(-2.0, 2.0, len(t))
    f = consistency_function(schedule, xt, t, exact_network(schedule, xt, t))
    np.testing.assert_allclose(f, exact_consistency(schedule, xt, t), rtol=1e-9, atol=1e-9)


@given(named_schedules(min_T=3, max_T=1000), st.data())
def test_the_exact_consistency_function_gives_zero_distillation_loss_for_every_pair(schedule, data):
    """Consistency distillation with an exact ODE step: x_r on x_t's trajectory, so f*(x_r, r) =
    f*(x_t, t) and the pseudo-Huber loss is zero to round-off, for every (t, r)."""
    T = schedule.num_timesteps
    t = data.draw(st.integers(2, T - 1))
    r = data.draw(st.integers(0, t - 1))
    abar = schedule.alphas_cumprod
    xt = np.linspace(-2.5, 2.5, 7)[None]
    xr = GAUSSIAN.ode_end(xt, abar[t], abar[r])
    ft = consistency_function(schedule, xt, np.array([t]), exact_network(schedule, xt, t))
    fr = xr if r == 0 else consistency_function(schedule, xr, np.array([r]), exact_network(schedule, xr, r))
    c = pseudo_huber_scale(7)
    assert pseudo_huber(ft - fr, c)[0] < 1e-20 + 1e-12 * c


# ---------------------------------------------------------------------------------------------
# Consistency training against consistency distillation


def test_the_training_point_is_a_ddim_jump_with_the_sample_itself_as_x0():
    """x_r = α_r x0 + σ_r ε with ε = (x_t − α_t x0)/σ_t is the DDIM jump from x_t with x̂0 = x0:
    so its average over x0 given x_t is the distillation point of the exact denoiser."""
    schedule = core.DiffusionSchedule.from_betas(core.cosine_betas(1000))
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 5, 3))
    t, r = np.array([900, 500, 300, 20, 1]), np.array([10, 499, 0, 19, 0])
    xt = core.q_sample(schedule, x0, t, eps)
    np.testing.assert_allclose(core.q_sample(schedule, x0, r, eps), core.ddim_jump(schedule, xt, t, r, x0),
                               rtol=1e-9, atol=1e-12)


def _ct_cd_ode_errors(gaps):
    """max over samples of |CT − CD| and |CD − ODE| at r = t − gap, on a fine cosine schedule."""
    schedule = core.DiffusionSchedule.from_betas(core.cosine_betas(4000))
    abar, t = schedule.alphas_cumprod, 2000
    rng = np.random.default_rng(1)
    x0 = GAUSSIAN.mean + GAUSSIAN.std * rng.normal(size=64)
    xt = core.q_sample(schedule, x0, t, rng.normal(size=64))
    denoised = GAUSSIAN.denoiser(xt, abar[t])
    ct, cd = [], []
    for gap in gaps:
        r = t - gap
        x_ct = core.ddim_jump(schedule, xt, t, r, x0)
        x_cd = core.ddim_jump(schedule, xt, t, r, denoised)
        x_ode = GAUSSIAN.ode_end(xt, abar[t], abar[r])
        ct.append(np.max(np.abs(exact_consistency(schedule, x_ct, r) - exact_consistency(schedule, x_cd, r))))
        cd.append(np.max(np.abs(x_cd - x_ode)))
    dtheta = vp_angles(schedule)[t] - vp_angles(schedule)[t - np.array(gaps)]
    return dtheta, np.array(ct), np.array(cd)


def test_the_training_target_differs_from_the_distillation_target_at_first_order_in_dt():
    """The measured order: the CT target's distance from the CD target (both through f*) falls as
    Δθ¹; the CD point's distance from the exact ODE point as Δθ² (one first-order step)."""
    dtheta, ct, cd = _ct_cd_ode_errors([1, 2, 4, 8, 16, 32, 64])
    ct_order = np.polyfit(np.log(dtheta), np.log(ct), 1)[0]
    cd_order = np.polyfit(np.log(dtheta), np.log(cd), 1)[0]
    assert 0.95 < ct_order < 1.05, ct_order
    assert 1.9 < cd_order < 2.1, cd_order


# ---------------------------------------------------------------------------------------------
# ECT's pairs, weights and distance


@given(named_schedules(min_T=3, max_T=2000), st.integers(0, 12), st.data())
def test_an_ect_pair_brackets_its_noise_level_and_stays_below_t(schedule, stage, data):
    T = schedule.num_timesteps
    t = np.array(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=6)))
    r = ect_pair_timesteps(schedule, t, stage)
    s = edm_noise_levels(schedule)
    shrink = 2.0 ** -(stage + 1) * (1 + 8 / (1 + np.exp(np.minimum(s[t], 700))))
    target = np.maximum(s[t] * (1 - shrink), 0.0)
    assert np.all((0 <= r) & (r < t))
    inside = (r > 0) & (r < t - 1)  # unclipped: s_r ≤ target < s_{r+1}
    assert np.all(s[r][inside] <= target[inside]) and np.all(target[inside] < s[r + 1][inside])
    assert np.all(s[r][r == t - 1] <= np.maximum(target, s[t - 1])[r == t - 1])


@given(named_schedules(min_T=3, max_T=2000), st.data())
def test_later_stages_bring_r_towards_t_and_stage_zero_at_low_noise_is_the_diffusion_loss(schedule, data):
    T = schedule.num_timesteps
    t = np.array(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=6)))
    stages = [ect_pair_timesteps(schedule, t, a) for a in range(10)]
    assert all(np.all(later >= earlier) for earlier, later in zip(stages, stages[1:], strict=False))
    low = edm_noise_levels(schedule)[t] < 0.2  # shrink > 1 at stage 0: s_r clipped to 0, r = t_min
    assert np.all(stages[0][low] == 0)


def test_ect_pairs_approach_t_at_the_rate_q_per_stage():
    """Far from t_min, s_t − s_r halves each stage (q = 2) until it reaches one index."""
    schedule = core.DiffusionSchedule.from_betas(core.cosine_betas(4000))
    s, t = edm_noise_levels(schedule), np.array([3000])
    gaps = [s[t][0] - s[ect_pair_timesteps(schedule, t, a)][0] for a in range(1, 7)]
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    np.testing.assert_allclose(ratios, 2.0, rtol=0.05)


@given(named_schedules(min_T=3, max_T=1000), st.data())
def test_the_weight_is_the_inverse_noise_level_gap(schedule, data):
    T = schedule.num_timesteps
    t = np.array(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=4)))
    r = np.array([data.draw(st.integers(0, int(x) - 1)) for x in t])
    w = consistency_weights(schedule, t, r)
    a, s = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
    level = np.divide(s, a, out=np.full_like(s, np.inf), where=a > 0)  # σ/α, EDM's σ
    expected = np.where(np.isinf(level[t]), 0.0, 1 / (level[t] - level[r]))
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-15)
    assert np.all(w > 0)


@given(st.floats(1e-4, 1.0), st.integers(0, 2**32 - 1))
def test_pseudo_huber_is_quadratic_near_zero_linear_far_away_and_the_plain_formula(c, seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(3, 4, 5))
    norm = np.sqrt(np.sum(d.reshape(3, -1) ** 2, axis=1))
    np.testing.assert_allclose(pseudo_huber(d, c), np.sqrt(norm**2 + c**2) - c, rtol=1e-9, atol=1e-15)
    tiny = d * 1e-6 * c
    np.testing.assert_allclose(pseudo_huber(tiny, c), np.sum(tiny.reshape(3, -1) ** 2, axis=1) / (2 * c),
                               rtol=1e-6)
    far = d * 1e6 * c
    far_norm = np.sqrt(np.sum(far.reshape(3, -1) ** 2, axis=1))
    np.testing.assert_allclose(pseudo_huber(far, c), far_norm - c, rtol=1e-9)
    np.testing.assert_allclose(pseudo_huber(d, 0.0), norm, rtol=1e-12)


def test_the_pseudo_huber_scale_is_song_and_dhariwals():
    assert pseudo_huber_scale(3 * 32 * 32) == pytest.approx(0.03, rel=0.01)  # their CIFAR-10 c
    assert pseudo_huber_scale(784) == pytest.approx(0.00054 * 28)


@given(named_schedules(min_T=50, max_T=4000), st.floats(-2.0, 1.0), st.floats(0.5, 3.0))
def test_the_lognormal_table_draws_the_noise_levels_quantiles(schedule, p_mean, p_std):
    """Its entries ascend; the share of entries at or below each index is the log-normal's
    probability of that index's noise-level bin (within one entry, 1/T)."""
    table = lognormal_timestep_table(schedule, p_mean, p_std)
    T = schedule.num_timesteps
    assert np.all(np.diff(table) >= 0) and table.min() >= 1 and table.max() <= T - 1
    log_s = np.log(edm_noise_levels(schedule))
    for idx in np.unique(table)[:-1]:
        edge = 0.5 * (log_s[idx] + log_s[idx + 1])
        cdf = 0.5 * math.erfc(-(edge - p_mean) / (p_std * math.sqrt(2)))
        assert abs(np.mean(table <= idx) - cdf) <= 1.0 / T + 1e-12


# ---------------------------------------------------------------------------------------------
# Multistep sampling


def chain_moments(schedule, coeffs, mean, var):
    """Mean and variance of the chain's output for x_τ0 ~ N(mean, var) and the exact network:
    each step is affine in x (read off at x = 0 and 1) plus independent noise σ_k z."""
    for k, t in enumerate(coeffs.timesteps):
        def step(x, k=k, t=t):
            xs = np.array([x])
            x0 = exact_network(schedule, xs, t) if t > 0 else xs
            return core.reverse_step(coeffs, k, xs, x0, np.zeros(1), "x0", False).x_prev[0]
        b = step(0.0)
        a = step(1.0) - b
        mean, var = a * mean + b, a * a * var + coeffs.sigma[k] ** 2
    return mean, var


@given(named_schedules(min_T=8, max_T=1000), st.data())
def test_multistep_sampling_with_the_exact_function_returns_exact_samples_of_the_gaussian(schedule, data):
    """From x_T ~ q(x_T), every call and re-noising keeps the marginal exact, so the output is
    q(x_{t_min}) = N(α_min μ, α_min² s² + σ_min²) whatever the number of calls and their times."""
    T = schedule.num_timesteps
    tau = sorted(set(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=5))) | {T - 1})
    coeffs = consistency_coefficients(schedule, tau)
    abar = schedule.alphas_cumprod
    mu, s2 = GAUSSIAN.mean, GAUSSIAN.std**2
    mean, var = chain_moments(schedule, coeffs, np.sqrt(abar[-1]) * mu, abar[-1] * s2 + 1 - abar[-1])
    assert mean == pytest.approx(np.sqrt(abar[0]) * mu, rel=1e-8, abs=1e-10)
    assert var == pytest.approx(abar[0] * s2 + 1 - abar[0], rel=1e-8)
    assert coeffs.sigma[-1] == 0.0 and np.all(coeffs.sigma[:-1] > 0)


def test_one_call_is_the_consistency_function_and_the_renoising_is_q_of_the_jump():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    one = consistency_coefficients(schedule, [999])
    c_skip, c_out = consistency_scalings(schedule, np.array([999]))
    a, s = schedule.sqrt_alphas_cumprod[999], schedule.sqrt_one_minus_alphas_cumprod[999]
    np.testing.assert_allclose([one.x0_coef[0], one.eps_coef[0]], [c_skip[0] * a + c_out[0], c_skip[0] * s])
    two = consistency_coefficients(schedule, [300, 999])
    moments = core.q_jump_mean_variance(schedule, np.ones(1), 0, 300)
    np.testing.assert_allclose(two.x0_coef[0] / one.x0_coef[0], moments.mean[0], rtol=1e-12)
    np.testing.assert_allclose(two.sigma[0] ** 2, moments.variance[0], rtol=1e-12)


def test_zero_terminal_snr_gives_finite_tables():
    schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(1000)))
    coeffs = consistency_coefficients(schedule, [200, 999])
    for name in ("x0_coef", "eps_coef", "sigma"):
        assert np.all(np.isfinite(getattr(coeffs, name)))
    assert np.all(ect_pair_timesteps(schedule, np.array([999]), 3) < 999)
    assert np.isfinite(consistency_weights(schedule, np.array([999]), np.array([998]))).all()


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_refused_naming_the_problem():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(100))
    cases = [
        (lambda: consistency_scalings(schedule, np.array([3]), 5), "at or above t_min"),
        (lambda: consistency_scalings(schedule, np.array([3]), 100), "t_min must be"),
        (lambda: consistency_scalings(schedule, np.array([3]), True), "t_min must be"),
        (lambda: consistency_scalings(schedule, np.array([3.0])), "integer"),
        (lambda: scalings_at_angles([0.1], 0.2), "angles"),
        (lambda: scalings_at_angles([0.1], 0.0), "angles"),
        (lambda: ect_pair_timesteps(schedule, np.array([0, 5]), 0), "above t_min"),
        (lambda: ect_pair_timesteps(schedule, np.array([5]), -1), "stage"),
        (lambda: ect_pair_timesteps(schedule, np.array([5]), 0, q=1.0), "q must"),
        (lambda: ect_pair_timesteps(schedule, np.array([5]), 0, k=-1.0), "k must"),
        (lambda: consistency_weights(schedule, np.array([5]), np.array([5])), "r < t"),
        (lambda: pseudo_huber(np.array(1.0), 0.1), "batch axis"),
        (lambda: pseudo_huber(np.ones((2, 3)), -0.1), "c must"),
        (lambda: pseudo_huber(np.array([[np.nan]]), 0.1), "non-finite"),
        (lambda: pseudo_huber_scale(0), "numbers_per_image"),
        (lambda: lognormal_timestep_table(schedule, p_std=0.0), "p_std"),
        (lambda: lognormal_timestep_table(core.DiffusionSchedule.from_betas([0.1])), "no index above"),
        (lambda: consistency_coefficients(schedule, [5, 3]), "increasing"),
        (lambda: consistency_coefficients(schedule, [5, 50], t_min=10), "at or above t_min"),
        (lambda: consistency_function(schedule, np.ones((1, 2)), np.array([3]), np.array(["a"])), "floating"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ---------------------------------------------------------------------------------------------
# The times of multistep sampling


@given(named_schedules(min_T=3, max_T=4000), st.data())
def test_the_sampling_times_start_at_t_minus_1_and_put_the_second_call_of_two_at_the_level(schedule, data):
    T = schedule.num_timesteps
    calls = data.draw(st.integers(1, min(T - 1, 40)))
    level = data.draw(st.floats(0.05, 20.0))
    times = consistency_timesteps(schedule, calls, level)
    assert len(times) == calls and times[-1] == T - 1 and times[0] >= 1
    assert np.all(np.diff(times) > 0)
    log_s = np.log(edm_noise_levels(schedule))
    two = consistency_timesteps(schedule, 2, level)
    nearest = np.min(np.abs(log_s[1:T - 1] - np.log(level)))
    assert abs(log_s[two[0]] - np.log(level)) == nearest
    if calls > 2 and calls - 1 <= two[0]:  # the later calls evenly over (0, τ₂]
        assert times[-2] == two[0] and np.ptp(np.diff(np.append(0, times[:-1]))) <= 1


def test_one_call_is_the_last_index_and_too_many_calls_are_refused():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(10))
    np.testing.assert_array_equal(consistency_timesteps(schedule, 1), [9])
    np.testing.assert_array_equal(consistency_timesteps(schedule, 9), np.arange(1, 10))
    with pytest.raises(ValueError, match="has 9"):
        consistency_timesteps(schedule, 10)
    with pytest.raises(ValueError, match="second_level"):
        consistency_timesteps(schedule, 2, 0.0)
    linear = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    assert list(consistency_timesteps(linear, 2)) == [350, 999]  # the measured best (docs/results.md)
