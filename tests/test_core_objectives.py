"""Objective tables: the training target and the x̂0 read-out of each objective."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_core_strategies import batches, schedules

from diffusion_core import (
    DiffusionSchedule,
    linear_betas,
    objective_tables,
    predict_x0_from_eps,
    q_sample,
    rescale_zero_terminal_snr,
    v_target,
)

HO = DiffusionSchedule.from_betas(linear_betas(1000))
ZT = DiffusionSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))
OBJECTIVES = ["eps", "x0", "v"]


def _gather(table, t):
    return table[t][:, None]  # (B,) → (B, 1) against data (B, D)


@given(schedules(), st.data(), st.sampled_from(OBJECTIVES))
def test_objective_target_is_eps_x0_or_v(schedule, data, objective):
    x0, eps, t = data.draw(batches(schedule))
    objective = "v" if objective == "eps" and schedule.alphas_cumprod[-1] == 0 else objective
    tables = objective_tables(schedule, objective)
    target = _gather(tables.target_x0_coef, t) * x0 + _gather(tables.target_eps_coef, t) * eps
    expected = {"eps": eps, "x0": x0, "v": v_target(schedule, x0, t, eps)}[objective]
    np.testing.assert_allclose(target, expected, rtol=1e-15, atol=1e-15)


@given(schedules(), st.data(), st.sampled_from(OBJECTIVES))
def test_x0_read_out_of_the_true_target_is_x0(schedule, data, objective):
    x0, eps, t = data.draw(batches(schedule))
    objective = "v" if objective == "eps" and schedule.alphas_cumprod[-1] == 0 else objective
    tables = objective_tables(schedule, objective)
    xt = q_sample(schedule, x0, t, eps)
    target = _gather(tables.target_x0_coef, t) * x0 + _gather(tables.target_eps_coef, t) * eps
    x0_hat = _gather(tables.x0_from_xt_coef, t) * xt + _gather(tables.x0_from_output_coef,
                                                                t) * target
    conditioning = 1 / schedule.sqrt_alphas_cumprod[t].min() if objective == "eps" else 1.0
    np.testing.assert_allclose(x0_hat, x0, atol=1e-12 * conditioning)


def test_eps_tables_are_the_reciprocal_square_roots_of_the_contract():
    tables = objective_tables(HO, "eps")
    np.testing.assert_allclose(tables.x0_from_xt_coef, HO.sqrt_recip_alphas_cumprod, rtol=1e-15)
    np.testing.assert_allclose(tables.x0_from_output_coef, -HO.sqrt_recipm1_alphas_cumprod,
                               rtol=1e-15)
    x0 = tables.x0_from_xt_coef[5] * 0.3 + tables.x0_from_output_coef[5] * 0.1
    np.testing.assert_allclose(x0, predict_x0_from_eps(HO, 0.3, 5, 0.1), rtol=1e-15)


def test_x0_and_v_tables_read_x0_from_the_output_and_the_rotation():
    x0_tables, v_tables = objective_tables(HO, "x0"), objective_tables(HO, "v")
    assert np.all(x0_tables.x0_from_xt_coef == 0) and np.all(x0_tables.x0_from_output_coef == 1)
    np.testing.assert_array_equal(v_tables.x0_from_xt_coef, HO.sqrt_alphas_cumprod)
    np.testing.assert_array_equal(v_tables.target_x0_coef, -HO.sqrt_one_minus_alphas_cumprod)


def test_eps_objective_at_zero_terminal_snr_raises_naming_v():
    with pytest.raises(ValueError, match="use the v objective"):
        objective_tables(ZT, "eps")
    with pytest.raises(ValueError, match="use the v objective"):
        predict_x0_from_eps(ZT, 0.0, 999, 0.0)
    assert np.all(np.isfinite(objective_tables(ZT, "v").x0_from_output_coef))


def test_objective_tables_are_read_only_float64_of_shape_T():
    tables = objective_tables(HO, "v")
    for field in dataclasses.fields(tables):
        table = getattr(tables, field.name)
        assert table.dtype == np.float64 and table.shape == (1000,) and not table.flags.writeable
