"""Loss weights (uniform, min-SNR-γ): each test is named after the property it proves."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_core_strategies import named_schedules

import diffusion_core as core
from nets.diffusion import Diffusion

OBJECTIVES = ["eps", "x0", "v"]


def squared_errors(schedule, objective, t, seed):
    """(‖ô − o‖², ‖x̂0 − x0‖²) of one small prediction error in ``objective``'s space at step t,
    x̂0 from the core's own conversion of the prediction."""
    rng = np.random.default_rng(seed)
    x0, eps, error = rng.standard_normal((3, 16))
    xt = core.q_sample(schedule, x0, t, eps)
    tables = core.objective_tables(schedule, objective)
    target = tables.target_x0_coef[t] * x0 + tables.target_eps_coef[t] * eps
    pred = target + 1e-3 * error
    x0_hat = tables.x0_from_xt_coef[t] * xt + tables.x0_from_output_coef[t] * pred
    return np.sum((pred - target) ** 2), np.sum((x0_hat - x0) ** 2)


@given(named_schedules(zero_terminal_snr=False), st.sampled_from(OBJECTIVES), st.floats(0.1, 20.0),
       st.data())
def test_min_snr_weights_make_every_objective_the_capped_x0_loss(schedule, objective, gamma, data):
    """w_o(t)·‖ô - o‖² = min(SNR_t, γ)·‖x̂0 - x0‖² for any error: the definition of min-SNR-γ
    (Hang et al. 2023 eq. 6)."""
    t = np.array(data.draw(st.integers(0, schedule.num_timesteps - 1)))
    own, x0_space = squared_errors(schedule, objective, t, data.draw(st.integers(0, 2**32 - 1)))
    w = core.loss_weights(schedule, objective, "min-snr", gamma)[t]
    assert w * own == pytest.approx(min(schedule.snr[t], gamma) * x0_space, rel=1e-6)


@given(named_schedules(zero_terminal_snr=False), st.sampled_from(OBJECTIVES), st.data())
def test_truncated_snr_weights_make_every_objective_the_x0_loss_times_max_snr_1(schedule, objective, data):
    """w_o(t)·‖ô - o‖² = max(SNR_t, 1)·‖x̂0 - x0‖²: Salimans & Ho (2022) §4's truncated SNR."""
    t = np.array(data.draw(st.integers(0, schedule.num_timesteps - 1)))
    own, x0_space = squared_errors(schedule, objective, t, data.draw(st.integers(0, 2**32 - 1)))
    w = core.loss_weights(schedule, objective, "truncated-snr")[t]
    assert w * own == pytest.approx(max(schedule.snr[t], 1.0) * x0_space, rel=1e-6)


def test_truncated_snr_weights_at_zero_terminal_snr_are_finite_for_v_and_x0_and_refused_for_eps():
    schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(100)))
    assert core.loss_weights(schedule, "v", "truncated-snr")[-1] == 1.0  # max(0, 1)/(0 + 1)
    assert core.loss_weights(schedule, "x0", "truncated-snr")[-1] == 1.0
    with pytest.raises(ValueError, match="SNR = 0"):
        core.loss_weights(schedule, "eps", "truncated-snr")


def test_uniform_weights_are_one_and_min_snr_caps_only_the_clean_steps():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    np.testing.assert_array_equal(core.loss_weights(schedule, "eps"), np.ones(1000))
    w = core.loss_weights(schedule, "eps", "min-snr", 5.0)
    snr = schedule.snr
    np.testing.assert_array_equal(w[snr <= 5.0], 1.0)  # noisy steps: ε-loss unchanged
    np.testing.assert_allclose(w[snr > 5.0], 5.0 / snr[snr > 5.0], rtol=1e-15)
    assert w[0] == pytest.approx(5.0 * 1e-4 / (1 - 1e-4))  # SNR(t=1) = ᾱ/(1-ᾱ), ᾱ = 1 - 1e-4
    assert w.dtype == np.float64 and not w.flags.writeable


def test_min_snr_weights_are_finite_at_zero_terminal_snr():
    schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(100)))
    for objective in OBJECTIVES:
        w = core.loss_weights(schedule, objective, "min-snr")
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert core.loss_weights(schedule, "eps", "min-snr")[-1] == 1.0
    assert core.loss_weights(schedule, "x0", "min-snr")[-1] == 0.0


def test_bad_weighting_and_gamma_are_refused():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(10))
    with pytest.raises(ValueError, match="weighting"):
        core.loss_weights(schedule, "eps", "snr")
    for gamma in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            core.loss_weights(schedule, "eps", "min-snr", gamma)


def test_the_torch_loss_is_the_weighted_mean_of_per_image_errors():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(100))
    torch.manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 3, 20, 50, 80, 99])
    pred = torch.randn(6, 1, 4, 4)
    for objective in OBJECTIVES:
        uniform = Diffusion(schedule, objective)
        weighted = Diffusion(schedule, objective, "min-snr", 5.0)
        target = uniform.training_target(x0, t, noise)
        per_image = ((pred - target) ** 2).flatten(1).mean(1).double().numpy()
        w = core.loss_weights(schedule, objective, "min-snr", 5.0)[t.numpy()]
        got = uniform.loss(lambda x, s: pred, x0, t, noise).item()
        assert got == pytest.approx(per_image.mean(), rel=1e-6)
        assert weighted.loss(lambda x, s: pred, x0, t, noise).item() == pytest.approx(
            (w * per_image).mean(), rel=1e-6)
