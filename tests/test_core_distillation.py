"""diffusion_core.distillation (progressive distillation, Salimans & Ho 2022): each test is named
after the property it proves, against an independent derivation."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_core_strategies import named_schedules, schedules

import diffusion_core as core


@st.composite
def schedule_and_pairs(draw, zero_terminal_snr=None):
    """A schedule and a batch of index pairs s < t (s may be -1, the clean end)."""
    schedule = draw(named_schedules(min_T=2, max_T=1000, zero_terminal_snr=zero_terminal_snr))
    T = schedule.num_timesteps
    t = np.array(draw(st.lists(st.integers(0, T - 1), min_size=1, max_size=4)), dtype=np.int64)
    s = np.array([draw(st.integers(-1, int(ti) - 1)) for ti in t], dtype=np.int64)
    return schedule, t, s


def alpha_sigma(schedule, idx):
    """(√ᾱ, √(1-ᾱ)) at indices idx, with -1 the clean end (1, 0), from the schedule's tables (its
    1 - ᾱ is computed without the cancellation a plain 1 - ᾱ has where ᾱ ≈ 1)."""
    i = np.maximum(idx, 0)
    a = np.where(idx < 0, 1.0, schedule.sqrt_alphas_cumprod[i])
    s = np.where(idx < 0, 0.0, schedule.sqrt_one_minus_alphas_cumprod[i])
    return a, s


@given(schedule_and_pairs())
def test_the_jump_is_the_ddim_step_written_with_eps_recomputed_from_x0(case):
    """Song et al. (2021) eq. 12, η = 0: z_s = α_s x̂0 + σ_s (z_t − α_t x̂0)/σ_t, as A·x̂0 + B·z_t."""
    schedule, t, s = case
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    a, b = core.ddim_jump_coefficients(schedule, t, s)
    np.testing.assert_allclose(b, s_s / s_t, rtol=1e-12, atol=0)
    np.testing.assert_allclose(a, a_s - s_s * a_t / s_t, rtol=1e-9, atol=1e-12)
    assert a.dtype == np.float64 and np.all(a > 0) and np.all(b >= 0)


@given(named_schedules(min_T=8, max_T=1000), st.integers(2, 8))
def test_the_jump_equals_the_cores_ddim_table_on_a_respaced_step_list(schedule, k):
    """An independent route: ddim_coefficients gives x_prev = A_k x̂0 + B_k ε̂ on respaced steps;
    with ε̂ = (z − α x̂0)/σ that is (A_k − B_k α/σ)·x̂0 + (B_k/σ)·z."""
    tau = core.select_timesteps(schedule.num_timesteps, min(k, schedule.num_timesteps), "trailing")
    table = core.ddim_coefficients(schedule, tau)
    t = table.timesteps
    s = np.append(t[1:], -1)  # running order: each step goes to the next, the last to x0
    a_t, s_t = alpha_sigma(schedule, t)
    a, b = core.ddim_jump_coefficients(schedule, t, s)
    np.testing.assert_allclose(b, table.eps_coef / s_t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a, table.x0_coef - table.eps_coef * a_t / s_t, rtol=1e-7, atol=1e-10)


@given(st.data())
@example(data=None)  # pinned: a zero-terminal-SNR schedule, the noisiest step, into the clean end
def test_one_student_jump_with_the_target_lands_on_the_teachers_two_steps(data):
    """Salimans & Ho (2022) Algorithm 2: for any teacher predictions x̂(z_t) and x̂(z_t'), one
    DDIM jump t → t'' with x̃ reproduces z_t → z_t' → z_t'' to float64 round-off."""
    if data is None:
        schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(10)))
        t, mid, nxt, seed = 9, 5, -1, 0
    else:
        schedule = data.draw(named_schedules(min_T=3, max_T=1000))
        T = schedule.num_timesteps
        t = data.draw(st.integers(2, T - 1))
        mid = data.draw(st.integers(0, t - 1))
        nxt = data.draw(st.integers(-1, mid - 1))
        seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    zt, x_hat_t, x_hat_mid = rng.standard_normal((3, 5))
    z_mid = core.ddim_jump(schedule, zt, t, mid, x_hat_t)
    z_next = core.ddim_jump(schedule, z_mid, mid, nxt, x_hat_mid)
    x_tilde = core.distillation_x0_target(schedule, zt, t, nxt, z_next)
    student = core.ddim_jump(schedule, zt, t, nxt, x_tilde)
    assert np.all(np.isfinite(x_tilde))
    np.testing.assert_allclose(student, z_next, rtol=1e-9, atol=1e-9 * np.abs(zt).max())


@given(schedule_and_pairs(zero_terminal_snr=False), st.integers(0, 2**32 - 1))
def test_the_target_in_eps_and_v_form_gives_back_the_same_x0(case, seed):
    """x̃ converted with the core's own conversions (ε̃ from x̃, ṽ from x̃ and ε̃) and back."""
    schedule, t, s = case
    rng = np.random.default_rng(seed)
    zt, zs = rng.standard_normal((2, len(t), 3))
    x_tilde = core.distillation_x0_target(schedule, zt, t, s, zs)
    eps = core.predict_eps_from_x0(schedule, zt, t, x_tilde)
    v = core.v_target(schedule, x_tilde, t, eps)
    scale = 1 + np.abs(x_tilde).max()
    np.testing.assert_allclose(core.predict_x0_from_eps(schedule, zt, t, eps), x_tilde, rtol=1e-6,
                               atol=1e-6 * scale)
    np.testing.assert_allclose(core.predict_x0_from_v(schedule, zt, t, v), x_tilde, rtol=1e-9,
                               atol=1e-9 * scale)


@given(named_schedules(min_T=3, max_T=1000), st.floats(-0.5, 0.5), st.floats(0.05, 1.0), st.data())
def test_with_an_exact_gaussian_teacher_the_target_is_its_two_step_map_composed(schedule, mu, std, data):
    """Data N(μ, s²): the exact denoiser is x̂(z, t) = μ + α_t s²/(α_t² s² + σ_t²)·(z − α_t μ),
    affine in z. Two affine DDIM jumps compose to an affine map of z_t, and so must x̃: its slope
    and intercept, composed here by hand, are the target's."""
    T = schedule.num_timesteps
    t = data.draw(st.integers(2, T - 1))
    mid = data.draw(st.integers(0, t - 1))
    nxt = data.draw(st.integers(-1, mid - 1))
    idx = np.array([t, mid, nxt])
    al, si = alpha_sigma(schedule, idx)

    k = al * std**2 / (al**2 * std**2 + si**2)  # x̂ = k z + c at t, t', t'' (the posterior mean)
    c = mu - k * al * mu

    def jump(i, j):  # z_j = a x̂ + b z_i, from the plain definitions
        b = si[j] / si[i]
        return al[j] - b * al[i], b

    a01, b01 = jump(0, 1)
    m1, n1 = a01 * k[0] + b01, a01 * c[0]  # z_t' = m1 z_t + n1
    a12, b12 = jump(1, 2)
    m2 = a12 * k[1] * m1 + b12 * m1  # z_t'' = m2 z_t + n2
    n2 = a12 * (k[1] * n1 + c[1]) + b12 * n1
    a02, b02 = jump(0, 2)
    slope, intercept = (m2 - b02) / a02, n2 / a02

    zt = np.linspace(-2.0, 2.0, 5)
    z_m = core.ddim_jump(schedule, zt, t, mid, k[0] * zt + c[0])
    z_n = core.ddim_jump(schedule, z_m, mid, nxt, k[1] * z_m + c[1])
    x_tilde = core.distillation_x0_target(schedule, zt, t, nxt, z_n)
    np.testing.assert_allclose(x_tilde, slope * zt + intercept, rtol=1e-7, atol=1e-7 * (1 + abs(intercept)))


@given(st.integers(1, 4000), st.integers(0, 6), st.integers(1, 5), st.sampled_from(["trailing", "linspace"]))
def test_each_round_halves_the_student_steps_keeping_every_other_teacher_step(T, rounds, log_to, spacing):
    to_steps = 2 ** (log_to - 1)
    from_steps = to_steps * 2 ** max(rounds, 1)
    if from_steps > T:
        with pytest.raises(ValueError, match="num_steps must be <="):
            core.distillation_timesteps(T, from_steps, to_steps, spacing)
        return
    lists = core.distillation_timesteps(T, from_steps, to_steps, spacing)
    assert [len(a) for a in lists] == [from_steps // 2**r for r in range(len(lists))]
    assert len(lists[-1]) == to_steps and all(a.dtype == np.int64 for a in lists)
    for teacher, student in zip(lists, lists[1:], strict=False):
        np.testing.assert_array_equal(student, teacher[1::2])
        assert student[-1] == teacher[-1]  # every round starts where its teacher starts
    if spacing == "trailing":  # the students' steps are the samplers' own trailing lists
        for a in lists:
            np.testing.assert_array_equal(a, core.select_timesteps(T, len(a), "trailing"))


def test_a_round_of_eight_teacher_steps_by_hand():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    lists = core.distillation_timesteps(1000, 8, 2)
    assert [a.tolist() for a in lists] == [[124, 249, 374, 499, 624, 749, 874, 999], [249, 499, 749, 999],
                                           [499, 999]]
    tables = core.distillation_tables(schedule, lists[0])
    assert tables.timesteps.tolist() == [999, 749, 499, 249]
    assert tables.mid_timesteps.tolist() == [874, 624, 374, 124]
    assert tables.next_timesteps.tolist() == [749, 499, 249, -1]
    assert tables.student_a[-1] == 1.0 and tables.student_b[-1] == 0.0  # the last step lands on x̃
    a, b = core.ddim_jump_coefficients(schedule, tables.mid_timesteps, tables.next_timesteps)
    np.testing.assert_array_equal(tables.teacher_second_a, a)
    np.testing.assert_array_equal(tables.teacher_second_b, b)
    assert not tables.student_a.flags.writeable and tables.timesteps.dtype == np.int64


@given(schedules(min_T=2))
def test_the_tables_are_finite_and_positive_on_every_schedule(schedule):
    T = schedule.num_timesteps
    K = 2 * max(1, min(T // 2, 8))
    tables = core.distillation_tables(schedule, core.select_timesteps(T, K, "trailing"))
    for a in (tables.teacher_first_a, tables.teacher_second_a, tables.student_a):
        assert np.all(np.isfinite(a)) and np.all(a > 0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: core.distillation_timesteps(1000, 64, 3), "power of two"),
    (lambda s: core.distillation_timesteps(1000, 64, 64), "power of two"),
    (lambda s: core.distillation_timesteps(1000, 48, 4), "power of two"),
    (lambda s: core.distillation_timesteps(1000, 64, 0), "to_steps must be >= 1"),
    (lambda s: core.distillation_tables(s, [1, 5, 9]), "even number"),
    (lambda s: core.ddim_jump_coefficients(s, 5, 5), "must be below"),
    (lambda s: core.ddim_jump_coefficients(s, 10, 3), "t must be integer indices"),
    (lambda s: core.ddim_jump_coefficients(s, 3, -2), "s must be integer indices"),
    (lambda s: core.ddim_jump_coefficients(s, 3.0, 1), "t must be integer indices"),
])
def test_bad_distillation_inputs_are_refused_by_name(call, message):
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(10))
    with pytest.raises(ValueError, match=message):
        call(schedule)
