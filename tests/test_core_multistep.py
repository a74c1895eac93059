"""DPM-Solver++ in the core: each test is named after the property it proves.

The convergence orders are measured, not assumed: on data whose denoiser is exact in closed form
(a Gaussian, and a mixture of Gaussians), the probability-flow ODE from a fixed x_T has a known
end point (closed form for the Gaussian, a tolerance-1e-12 Runge–Kutta solve for the mixture);
each solver's global error against it is measured for K steps uniform in λ, and the slope of
log error against log K is its order. The mixture's sharper x̂0(λ) needs K = 128..512 to be in
the asymptotic range (at K = 16..64 the local slopes of the three solvers are 0.6-0.8, 2.0 and
2.4-2.8). On the Gaussian, 3M's slope is ≈4 over K = 16..128 (its x̂0(λ) makes the leading
error term nearly vanish); the test asks for at least 3 there.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad, solve_ivp
from test_core_strategies import named_schedules

import diffusion_core as core
from diffusion_core.multistep import (
    dpmpp_coefficients,
    dpmpp_tables,
    exponential_integrals,
    lagrange_weights,
    path_coefficients,
)

LAMBDA_START, LAMBDA_END = -4.0, 4.0  # half log-SNR: ᾱ from 3e-4 to 0.9997
STEPS = (16, 32, 64, 128)  # Gaussian
MIXTURE_STEPS = (128, 256, 512)


def alphas_cumprod_of(lam):
    return 1.0 / (1.0 + np.exp(-2.0 * np.asarray(lam)))  # λ = log(α/σ) ⇔ ᾱ = sigmoid(2λ)


def log_snr_path(K, start=LAMBDA_START, end=LAMBDA_END):
    return alphas_cumprod_of(np.linspace(start, end, K + 1))


# ---------------------------------------------------------------------------------------------
# Identities


@given(named_schedules(min_T=2), st.data())
def test_first_order_dpmpp_is_ddim_with_eta_zero(schedule, data):
    T = schedule.num_timesteps
    K = data.draw(st.integers(1, T))
    steps = core.select_timesteps(T, K, data.draw(st.sampled_from(["leading", "trailing", "linspace"])))
    ours, ddim = dpmpp_coefficients(schedule, steps, order=1), core.ddim_coefficients(schedule, steps)
    np.testing.assert_array_equal(ours.timesteps, ddim.timesteps)
    for name in ("x0_coef", "eps_coef", "sigma", "sqrt_alphas_cumprod"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ddim, name), rtol=1e-11, atol=1e-14)
    assert ours.history_length == 0


@given(named_schedules(min_T=2, zero_terminal_snr=False), st.data())
def test_first_order_sde_dpmpp_is_ddpm_with_the_posterior_variance(schedule, data):
    T = schedule.num_timesteps
    steps = core.select_timesteps(T, data.draw(st.integers(1, T)), "trailing")
    ours = dpmpp_coefficients(schedule, steps, order=1, stochastic=True)
    ddpm = core.ddim_coefficients(schedule, steps, eta=1.0)  # DDIM eq. 16: η = 1 is σ² = β̃
    for name in ("x0_coef", "eps_coef", "sigma"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ddpm, name), rtol=1e-9, atol=1e-12)


@given(st.floats(1e-3, 5.0), st.floats(1e-2, 3.0), st.floats(1e-2, 3.0),
       st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_lagrange_weights_integrate_a_quadratic_in_lambda_exactly(h, h1, h2, coef):
    q = np.polynomial.Polynomial(coef)  # x̂0 as a quadratic in u = λ - λ_s
    nodes = np.array([0.0, -h1, -h1 - h2])
    w = lagrange_weights(np.array([h]), np.array([h1]), np.array([h2]))
    ours = sum(wj[0] * q(u) for wj, u in zip(w, nodes, strict=True))
    exact = quad(lambda u: np.exp(u - h) * q(u), 0.0, h, epsabs=1e-13, epsrel=1e-12)[0]
    assert ours == pytest.approx(exact, rel=1e-8, abs=1e-10)


@given(st.floats(1e-4, 30.0))
def test_exponential_integrals_match_quadrature(h):
    for n, value in enumerate(exponential_integrals(np.array(h))):
        exact = quad(lambda u, n=n: np.exp(u - h) * u**n, 0.0, h, epsrel=1e-12)[0]
        assert float(value) == pytest.approx(exact, rel=1e-7, abs=1e-12)


def test_warm_up_uses_the_history_that_exists_and_the_last_step_is_first_order():
    path = np.append(log_snr_path(6)[:-1], 1.0)  # the last step goes into data, λ = +∞
    np.testing.assert_array_equal(dpmpp_tables(path, order=3).order, [1, 2, 3, 3, 3, 1])
    np.testing.assert_array_equal(dpmpp_tables(path, order=2).order, [1, 2, 2, 2, 2, 1])
    last = path_coefficients(path, order=3)
    assert last.x0_coef[-1] == 1.0 and last.eps_coef[-1] == 0.0 and last.x0_prev_coef[-1] == 0.0
    assert last.x0_prev_coef[0] == 0.0 and last.x0_prev2_coef[1] == 0.0


def test_a_zero_terminal_snr_start_gives_finite_tables_without_history_across_it():
    schedule = core.DiffusionSchedule.from_betas(
        core.rescale_zero_terminal_snr(core.linear_betas(1000)))
    assert schedule.alphas_cumprod[-1] == 0.0
    steps = core.select_timesteps(1000, 10, "trailing")
    for order, stochastic in ((2, False), (3, False), (2, True)):
        c = dpmpp_coefficients(schedule, steps, order, stochastic)
        for name in ("x0_coef", "eps_coef", "x0_prev_coef", "x0_prev2_coef", "sigma"):
            assert np.all(np.isfinite(getattr(c, name))), (order, name)
        assert c.x0_prev_coef[1] == 0.0  # step 1 would reach back across λ = -∞
    tables = dpmpp_tables(np.append(schedule.alphas_cumprod[steps[::-1]], 1.0), order=3)
    np.testing.assert_array_equal(tables.order, [1, 1, 2, 3, 3, 3, 3, 3, 3, 1])


def test_bad_paths_and_orders_are_refused():
    for path, match in (([0.5], "at least 2"), ([0.5, 0.4], "increase"), ([0.0, 0.0, 1.0], "increase"),
                        ([0.1, 1.0, 1.0], "increase"), ([0.0, 1.0 - 1e-9, 1.0], None)):
        if match is None:
            dpmpp_tables(path)
        else:
            with pytest.raises(ValueError, match=match):
                dpmpp_tables(path)
    with pytest.raises(ValueError, match="order"):
        dpmpp_tables([0.1, 0.5], order=4)
    with pytest.raises(ValueError, match="order"):
        dpmpp_tables([0.1, 0.5], order=3, stochastic=True)


def test_reverse_step_refuses_a_multistep_step_without_its_history():
    c = path_coefficients(log_snr_path(4), order=3)
    x = np.zeros(3)
    core.reverse_step(c, 0, x, x, None, "x0", False)
    with pytest.raises(ValueError, match="x0_history"):
        core.reverse_step(c, 2, x, x, None, "x0", False, x0_history=(x,))


# ---------------------------------------------------------------------------------------------
# Convergence order against the exact probability-flow ODE


def run_chain(coeffs, x_T, denoiser, noise=None):
    """The core's own reverse_step, chained with the x̂0 history; the exact denoiser as model."""
    x, history = x_T, []
    for k in range(coeffs.num_steps):
        abar = coeffs.sqrt_alphas_cumprod[k] ** 2
        z = None if noise is None or coeffs.sigma[k] == 0 else noise[k]
        step = core.reverse_step(coeffs, k, x, denoiser(x, abar), z, "x0", False,
                                 x0_history=tuple(history))
        x, history = step.x_prev, [step.x0_pred, *history][:2]
    return x


class Gaussian:
    """x0 ~ N(μ, s²) per coordinate: E[x0|x_t] and the ODE's map are affine in x_t."""

    mean, std = 0.3, 0.5

    def denoiser(self, x, abar):
        a, var = np.sqrt(abar), abar * self.std**2 + (1 - abar)
        return self.mean + a * self.std**2 / var * (x - a * self.mean)

    def ode_end(self, x_T, abar_T, abar_0):
        """The probability-flow ODE transports quantiles: x_t = αμ + √(α²s² + σ²)·ξ."""
        def scale(abar):
            return np.sqrt(abar * self.std**2 + 1 - abar)
        xi = (x_T - np.sqrt(abar_T) * self.mean) / scale(abar_T)
        return np.sqrt(abar_0) * self.mean + scale(abar_0) * xi


class Mixture:
    """x0 ~ ½N(-0.6, 0.15²) + ½N(0.5, 0.25²): E[x0|x_t] from the posterior weights."""

    means, stds, weights = np.array([-0.6, 0.5]), np.array([0.15, 0.25]), np.array([0.5, 0.5])

    def denoiser(self, x, abar):
        x = np.asarray(x, dtype=np.float64)[..., None]
        a = np.sqrt(abar)
        var = abar * self.stds**2 + 1 - abar
        log_p = np.log(self.weights) - 0.5 * np.log(var) - 0.5 * (x - a * self.means) ** 2 / var
        post = np.exp(log_p - log_p.max(-1, keepdims=True))
        post /= post.sum(-1, keepdims=True)
        cond = self.means + a * self.stds**2 / var * (x - a * self.means)
        return (post * cond).sum(-1)

    def ode_end(self, x_T, lam_T, lam_0):
        """The probability-flow ODE in λ, solved by DOP853 to 1e-12: from d(x/σ)/dλ = e^λ x̂0
        (DPM-Solver++ eq. 9 differentiated) and d log σ/dλ = -ᾱ, dx/dλ = α·x̂0(x) - ᾱ·x."""
        def rhs(lam, x):
            abar = alphas_cumprod_of(lam)
            return np.sqrt(abar) * self.denoiser(x, abar) - abar * x
        return solve_ivp(rhs, (lam_T, lam_0), x_T, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]


def global_errors(data, order, ode_end, steps=STEPS):
    x_T = np.linspace(-2.5, 2.5, 11) * np.sqrt(alphas_cumprod_of(LAMBDA_START) * 0.25 + 1)
    errors = []
    for K in steps:
        coeffs = path_coefficients(log_snr_path(K), order)
        errors.append(np.max(np.abs(run_chain(coeffs, x_T, data.denoiser) - ode_end(x_T))))
    return np.array(errors)


def measured_order(errors, steps=STEPS):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize(("order", "low", "high"), [(1, 0.9, 1.15), (2, 1.85, 2.3), (3, 2.8, 4.5)])
def test_dpmpp_converges_at_its_order_on_gaussian_data(order, low, high):
    data = Gaussian()
    errors = global_errors(data, order, lambda x: data.ode_end(
        x, alphas_cumprod_of(LAMBDA_START), alphas_cumprod_of(LAMBDA_END)))
    assert low < measured_order(errors) < high, errors
    assert np.all(np.diff(errors) < 0)


@pytest.mark.parametrize(("order", "low", "high"), [(1, 0.85, 1.1), (2, 1.85, 2.2), (3, 2.8, 3.2)])
def test_dpmpp_converges_at_its_order_on_a_mixture_of_gaussians(order, low, high):
    data = Mixture()
    errors = global_errors(data, order, lambda x: data.ode_end(x, LAMBDA_START, LAMBDA_END),
                           MIXTURE_STEPS)
    assert low < measured_order(errors, MIXTURE_STEPS) < high, errors


def test_the_closed_form_gaussian_ode_end_agrees_with_the_numerical_ode_solve():
    """The two references agree: the mixture's ODE solver, given one Gaussian component."""
    gauss, mix = Gaussian(), Mixture()
    mix.means, mix.stds, mix.weights = np.array([gauss.mean]), np.array([gauss.std]), np.array([1.0])
    x_T = np.linspace(-2, 2, 5)
    np.testing.assert_allclose(mix.ode_end(x_T, LAMBDA_START, LAMBDA_END), gauss.ode_end(
        x_T, alphas_cumprod_of(LAMBDA_START), alphas_cumprod_of(LAMBDA_END)), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# The SDE solver samples the data distribution


def output_moments(coeffs, data, mean_T, var_T):
    """Mean and variance of the chain's output for x_T ~ N(mean_T, var_T), propagated exactly:
    with a Gaussian's (affine) denoiser every state is an affine function of x_T and the z's."""
    mean = np.array([mean_T, 0.0, 0.0])  # (x, x̂0_{k-1}, x̂0_{k-2})
    cov = np.diag([var_T, 0.0, 0.0])
    for k in range(coeffs.num_steps):
        abar = coeffs.sqrt_alphas_cumprod[k] ** 2
        a, s = np.sqrt(abar), np.sqrt(1 - abar)
        g = a * data.std**2 / (abar * data.std**2 + 1 - abar)  # x̂0 = μ(1 - g·α) + g·x
        x0_row, x0_const = np.array([g, 0, 0]), data.mean * (1 - g * a)
        eps_row, eps_const = (np.array([1, 0, 0]) - a * x0_row) / s, -a * x0_const / s
        row = (coeffs.x0_coef[k] * x0_row + coeffs.eps_coef[k] * eps_row
               + coeffs.x0_prev_coef[k] * np.array([0, 1, 0]) + coeffs.x0_prev2_coef[k] * np.array([0, 0, 1]))
        const = coeffs.x0_coef[k] * x0_const + coeffs.eps_coef[k] * eps_const
        M = np.array([row, x0_row, [0, 1, 0]])
        c = np.array([const, x0_const, 0.0])
        mean = M @ mean + c
        cov = M @ cov @ M.T + np.diag([coeffs.sigma[k] ** 2, 0, 0])
    return mean[0], cov[0, 0]


@pytest.mark.parametrize(("order", "min_rate"), [(1, 0.8), (2, 1.5)])
def test_sde_dpmpp_output_distribution_converges_to_the_data(order, min_rate):
    """Weak convergence: |mean error| + |variance error| of the output, exactly. Measured rates
    over K = 16..128: 0.86 for order 1 (DDPM; local slopes 0.78 → 0.93, rising to 1) and 2.6
    for order 2."""
    data = Gaussian()
    abar_T = alphas_cumprod_of(LAMBDA_START)
    var_T = abar_T * data.std**2 + 1 - abar_T
    errors = []
    for K in STEPS:
        path = np.append(log_snr_path(K)[:-1], 1.0)  # to the data itself
        coeffs = path_coefficients(path, order, stochastic=True)
        mean, var = output_moments(coeffs, data, np.sqrt(abar_T) * data.mean, var_T)
        errors.append(abs(mean - data.mean) + abs(var - data.std**2))
    assert np.all(np.diff(errors) < 0) and errors[-1] < 0.02, errors  # K = 128
    assert measured_order(np.array(errors)) > min_rate


def test_the_ode_solvers_push_the_marginal_to_the_data_too():
    """Cross-check of `output_moments` on the deterministic solvers (σ = 0 everywhere)."""
    data = Gaussian()
    abar_T = alphas_cumprod_of(LAMBDA_START)
    var_T = abar_T * data.std**2 + 1 - abar_T
    mean, var = output_moments(path_coefficients(np.append(log_snr_path(128)[:-1], 1.0), 3), data,
                               np.sqrt(abar_T) * data.mean, var_T)
    assert mean == pytest.approx(data.mean, abs=1e-3) and var == pytest.approx(data.std**2, rel=1e-2)


# ---------------------------------------------------------------------------------------------
# The log-SNR-uniform step list


@given(named_schedules(min_T=2), st.data())
def test_log_snr_timesteps_are_distinct_ascending_and_span_the_schedule(schedule, data):
    T = schedule.num_timesteps
    K = data.draw(st.integers(2, T))
    steps = core.log_snr_timesteps(schedule, K)
    assert steps.dtype == np.int64 and steps.shape == (K,)
    assert steps[0] == 0 and steps[-1] == T - 1 and np.all(np.diff(steps) > 0)
    if K == T:
        np.testing.assert_array_equal(steps, np.arange(T))


def test_log_snr_timesteps_are_uniform_in_lambda_up_to_the_integer_grid():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    lam = np.log(schedule.sqrt_alphas_cumprod / schedule.sqrt_one_minus_alphas_cumprod)
    for K in (5, 10, 20, 50):
        gaps = -np.diff(lam[core.log_snr_timesteps(schedule, K)])
        target = (lam[0] - lam[-1]) / (K - 1)
        # the first gaps are where λ moves fastest per index (λ(0) - λ(1) = 0.35)
        assert np.all(np.abs(gaps - target) < 0.36), (K, gaps, target)
    np.testing.assert_array_equal(core.log_snr_timesteps(schedule, 1), [999])
    with pytest.raises(ValueError, match="num_steps"):
        core.log_snr_timesteps(schedule, 1001)


def test_log_snr_timesteps_keep_a_zero_terminal_snr_last_step():
    schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(100)))
    steps = core.log_snr_timesteps(schedule, 8)
    assert steps[-1] == 99 and steps[0] == 0 and np.all(np.diff(steps) > 0)
    assert np.all(np.isfinite(dpmpp_coefficients(schedule, steps, order=3).x0_coef))
