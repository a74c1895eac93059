"""Invalid input raises ValueError naming the problem; valid input never gives NaN; float32 in,
float32 out; importing the core does not import torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_core_strategies import batches, schedules, small_betas

import diffusion_core as core
from diffusion_core import (
    DiffusionSchedule,
    ReverseCoefficients,
    betas_from_alpha_bar,
    cosine_betas,
    ddim_coefficients,
    ddpm_coefficients,
    linear_betas,
    make_betas,
    objective_tables,
    q_sample,
    rescale_zero_terminal_snr,
    respace,
    reverse_step,
    select_timesteps,
    sigmoid_betas,
    validate_betas,
)

HO = DiffusionSchedule.from_betas(linear_betas(1000))
SCHEDULE_FUNCTIONS = [linear_betas, cosine_betas, sigmoid_betas]


@given(st.integers(max_value=0), st.sampled_from(SCHEDULE_FUNCTIONS))
def test_every_schedule_rejects_T_below_one(T, function):
    with pytest.raises(ValueError, match="T must be >= 1"):
        function(T)


@pytest.mark.parametrize("T", [2.0, "10", True, None])
def test_schedules_reject_a_T_that_is_not_an_integer(T):
    with pytest.raises(ValueError, match="T must be an integer"):
        linear_betas(T)


bad_betas = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True),
                      st.just(1.0), st.just(np.nan), st.just(np.inf), st.just(-np.inf))


@given(small_betas(min_T=2), st.data(), bad_betas)
def test_validate_betas_rejects_a_beta_outside_the_open_unit_interval(betas, data, bad):
    i = data.draw(st.integers(0, len(betas) - (2 if bad == 1.0 else 1)))  # β = 1 only last
    betas[i] = bad
    with pytest.raises(ValueError, match="betas"):
        DiffusionSchedule.from_betas(betas)


@pytest.mark.parametrize("betas,message", [
    ([], "T >= 1"), ([[0.1, 0.2]], "1-D"), (["a"], "real array"), ([1e-17], "resolution"),
    (np.full(4000, 0.5), "underflows"), ([0.1, 1.0, 0.1], "betas\\[1\\] = 1.0"),
    ([np.nan], "non-finite"),
])
def test_validate_betas_names_the_problem(betas, message):
    with pytest.raises(ValueError, match=message):
        validate_betas(betas)


@pytest.mark.parametrize("call,message", [
    (lambda: linear_betas(10, 0.0, 0.02), "beta_start must lie in \\(0, 1\\)"),
    (lambda: sigmoid_betas(10, 1e-4, 1.5), "beta_end"),
    (lambda: linear_betas(10, float("nan")), "beta_start"),
    (lambda: linear_betas(10, "0.1"), "beta_start must be a real number"),
    (lambda: cosine_betas(10, s=-0.1), "s must lie in"),
    (lambda: cosine_betas(10, max_beta=1.5), "max_beta must lie in \\(0, 1\\]"),
    (lambda: betas_from_alpha_bar(lambda u: 1 + u, 10), "betas must lie in"),
    (lambda: betas_from_alpha_bar(lambda u: max(0.0, 0.5 - u), 10), "alpha_bar fn"),
    (lambda: rescale_zero_terminal_snr([0.1]), "T >= 2"),
    (lambda: make_betas("quadratic", 10), "^unknown beta schedule: quadratic$"),
])
def test_schedule_options_are_checked_at_entry(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(schedules(), st.data())
def test_t_out_of_range_is_rejected(schedule, data):
    T = schedule.num_timesteps
    # bounded to int64: t arrives as an integer array
    t = data.draw(st.one_of(st.integers(-(2**63), -1), st.integers(T, 2**63 - 1)))
    with pytest.raises(ValueError, match="t must lie in"):
        q_sample(schedule, np.zeros(1), np.array([t]), np.zeros(1))


@given(st.sampled_from([np.float64(3.0), 2.5, np.array([1.0]), True, np.array(["1"])]))
def test_t_that_is_not_an_integer_array_is_rejected(t):
    with pytest.raises(ValueError, match="t must be an integer array"):
        q_sample(HO, np.zeros(1), t, np.zeros(1))


@given(st.integers(2, 4), st.integers(2, 4), st.integers(1, 3))  # ≥ 2: size-1 axes broadcast
def test_shapes_that_do_not_broadcast_are_rejected(B, D, extra):
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        q_sample(HO, np.zeros((B, D)), np.zeros(B, np.int64), np.zeros((B, D + extra)))
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        q_sample(HO, np.zeros((B, D)), np.zeros(B + extra, np.int64), np.zeros((B, D)))


def test_likelihood_arrays_that_do_not_broadcast_are_rejected():
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        core.normal_kl(np.zeros(2), 0.0, np.zeros(3), 0.0)


def test_t_with_more_axes_than_the_data_is_rejected():
    with pytest.raises(ValueError, match="leading"):
        q_sample(HO, np.zeros(3), np.zeros((3, 1), np.int64), np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1j])
def test_non_finite_or_complex_data_is_rejected(bad):
    with pytest.raises(ValueError, match="x0"):
        q_sample(HO, np.array([0.0, bad]), 0, np.zeros(2))


@given(st.floats(max_value=0.0, exclude_max=True) | st.just(np.nan) | st.just(np.inf))
def test_ddim_rejects_negative_or_non_finite_eta(eta):
    with pytest.raises(ValueError, match="eta"):
        ddim_coefficients(HO, eta=eta)


@pytest.mark.parametrize("call,message", [
    (lambda: select_timesteps(10, 3, "uniform"), "unknown spacing"),
    (lambda: select_timesteps(10, 11, "leading"), "num_steps must be <= T"),
    (lambda: select_timesteps(10, 0, "leading"), "num_steps must be >= 1"),
    (lambda: objective_tables(HO, "score"), "unknown objective"),
    (lambda: ddpm_coefficients(HO, variance="learned"), "unknown variance"),
    (lambda: reverse_step(ddpm_coefficients(HO), 0, 0.0, 0.0, 0.0, "score"), "objective"),
    (lambda: reverse_step(ddpm_coefficients(HO), 0, 0.0, 0.0, 0.0, clip_x0=1), "clip_x0"),
    (lambda: reverse_step(ddpm_coefficients(HO), 1000, 0.0, 0.0, 0.0), "k must be"),
    (lambda: reverse_step(ddpm_coefficients(HO), 1.0, 0.0, 0.0, 0.0), "k must be"),
    (lambda: reverse_step(ddpm_coefficients(HO), 0, 0.0, 0.0, None), "noise is required"),
    (lambda: core.nats_to_bits_per_dim(1.0), "batch axis"),
    (lambda: ReverseCoefficients(*[np.zeros(2)] * 5, np.zeros(3)), "same length"),
])
def test_sampler_options_are_checked_at_entry(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(st.lists(st.integers(-3, 1002), max_size=6))
def test_timestep_lists_must_be_strictly_increasing_non_empty_and_in_range(steps):
    valid = len(steps) > 0 and all(0 <= s < 1000 for s in steps) and all(
        a < b for a, b in zip(steps, steps[1:], strict=False))
    if valid:
        assert respace(HO, np.array(steps)).num_timesteps == len(steps)
    else:
        with pytest.raises(ValueError, match="timesteps|t must"):
            ddpm_coefficients(HO, np.array(steps, dtype=np.int64))


@given(schedules(), st.data(), st.sampled_from(["eps", "x0", "v"]), st.floats(0, 1))
def test_valid_input_never_gives_nan(schedule, data, objective, eta):
    x0, noise, t = data.draw(batches(schedule))
    xt = q_sample(schedule, x0, t, noise)
    out = [xt, core.q_posterior_mean_variance(schedule, x0, xt, t).mean,
           core.predict_eps_from_x0(schedule, xt, t, x0), core.v_target(schedule, x0, t, noise),
           core.vb_term(schedule, x0, xt, t, x0, np.zeros_like(x0)), core.prior_kl(schedule, x0)]
    objective = "v" if objective == "eps" and schedule.alphas_cumprod[-1] == 0 else objective
    for coeffs in (ddpm_coefficients(schedule), ddim_coefficients(schedule, None, eta)):
        out.append(reverse_step(coeffs, 0, xt, noise, noise, objective).x_prev)
    assert all(np.all(np.isfinite(o)) for o in out)


FLOAT32_CASES = {
    "q_sample": lambda s, x0, n, t: q_sample(s, x0, t, n),
    "q_mean": lambda s, x0, n, t: core.q_mean_variance(s, x0, t).mean,
    "posterior_mean": lambda s, x0, n, t: core.q_posterior_mean_variance(s, x0, n, t).mean,
    "predict_eps_from_x0": lambda s, x0, n, t: core.predict_eps_from_x0(s, n, t, x0),
    "predict_x0_from_eps": lambda s, x0, n, t: core.predict_x0_from_eps(s, n, t, x0),
    "v_target": lambda s, x0, n, t: core.v_target(s, x0, t, n),
    "predict_x0_from_v": lambda s, x0, n, t: core.predict_x0_from_v(s, n, t, x0),
    "predict_eps_from_v": lambda s, x0, n, t: core.predict_eps_from_v(s, n, t, x0),
    "reverse_step": lambda s, x0, n, t: reverse_step(ddpm_coefficients(s), 0, n, x0, n).x_prev,
    "normal_kl": lambda s, x0, n, t: core.normal_kl(x0, n, n, x0),
    "discretized_ll": lambda s, x0, n, t: core.discretized_gaussian_log_likelihood(x0, n, x0),
    "prior_kl": lambda s, x0, n, t: core.prior_kl(s, x0),
    "vb_term": lambda s, x0, n, t: core.vb_term(s, x0, n, t, n, x0),
    "approx_cdf": lambda s, x0, n, t: core.approx_standard_normal_cdf(n),
}


@pytest.mark.parametrize("name", FLOAT32_CASES)
@given(data=st.data())
def test_float32_inputs_give_float32_outputs_within_1e_6_of_float64(name, data):
    schedule = DiffusionSchedule.from_betas(linear_betas(data.draw(st.integers(1, 1000))))
    x0, noise, t = data.draw(batches(schedule))
    x0_32, noise_32 = x0.astype(np.float32), noise.astype(np.float32)
    got = FLOAT32_CASES[name](schedule, x0_32, noise_32, t)
    expected = FLOAT32_CASES[name](schedule, x0_32.astype(np.float64),
                                   noise_32.astype(np.float64), t)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_schedule_quantities_stay_float64_for_float32_data():
    moments = core.q_mean_variance(HO, np.zeros(3, np.float32), 5)
    assert moments.mean.dtype == np.float32 and moments.variance.dtype == np.float64
    assert ddpm_coefficients(HO).sigma.dtype == np.float64
    assert q_sample(HO, np.zeros(2, np.float16), 0, np.zeros(2, np.float16)).dtype == np.float16
    assert q_sample(HO, np.zeros(2, np.int64), 0, np.zeros(2, np.int64)).dtype == np.float64


def test_importing_diffusion_core_does_not_import_torch():
    code = "import sys, diffusion_core; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
