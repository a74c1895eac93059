"""nets against diffusion_core: the same inputs and noise give the same numbers (float64)."""

import numpy as np
import pytest
import torch

import diffusion_core as core
from nets.diffusion import Diffusion
from nets.sampling import DeviceCoefficients, chain, make_coefficients

SCHEDULES = {
    "linear": core.DiffusionSchedule.from_betas(core.linear_betas(1000)),
    "cosine": core.DiffusionSchedule.from_betas(core.cosine_betas(200)),
}


def batch(seed=0, n=6):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (n, 1, 4, 4))
    return x0, rng.standard_normal((n, 1, 4, 4)), rng.standard_normal((n, 1, 4, 4))


def torch_reverse_step(dev, k, diffusion, xt, output, z):
    """Step k through the sampler's own (K, 9) table and update: what `sample` runs per step."""
    row = chain._step_table(dev, diffusion, xt.dtype)[k]
    return chain._update(xt, output, z, chain._StepCoefficients(*row.unbind(0)), clip_x0=True)


@pytest.mark.parametrize("name", SCHEDULES)
def test_torch_q_sample_equals_core_q_sample(name):
    sched = SCHEDULES[name]
    x0, noise, _ = batch()
    t = np.array([0, 1, 17, sched.num_timesteps // 2, sched.num_timesteps - 2, sched.num_timesteps - 1])
    ours = Diffusion(sched).q_sample(torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(noise))
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), core.q_sample(sched, x0, t, noise), rtol=0, atol=1e-12)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_torch_target_and_x0_prediction_equal_core_conversions(objective):
    sched = SCHEDULES["linear"]
    x0, noise, _ = batch(1)
    t = np.array([0, 5, 100, 500, 998, 999])
    diff = Diffusion(sched, objective)
    tt = torch.from_numpy(t)
    target = diff.training_target(torch.from_numpy(x0), tt, torch.from_numpy(noise)).numpy()
    expected = {"eps": noise, "x0": x0, "v": core.v_target(sched, x0, t, noise)}[objective]
    np.testing.assert_allclose(target, expected, atol=1e-12)
    xt = core.q_sample(sched, x0, t, noise)
    x0_hat = diff.predict_x0(torch.from_numpy(xt), tt, torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(x0_hat, x0, atol=1e-9)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddpm", {"variance": "beta"}),
                                        ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.7}),
                                        ("ddim", {"steps": 37}), ("ddpm", {"steps": 50})])
@pytest.mark.parametrize("objective", ["eps", "v"])
def test_torch_reverse_step_equals_core_reverse_step(sampler, kw, objective):
    sched = SCHEDULES["linear"]
    coeffs = make_coefficients(sched, sampler, **kw)
    dev = DeviceCoefficients(coeffs)
    diff = Diffusion(sched, objective)
    x0, out, z = batch(2)
    xt = core.q_sample(sched, x0, np.full(6, coeffs.timesteps[0]), z)
    for k in [0, 1, len(coeffs.timesteps) // 2, len(coeffs.timesteps) - 1]:
        ref = core.reverse_step(coeffs, k, xt, out, z, objective=objective, clip_x0=True)
        x_prev, x0_pred = torch_reverse_step(dev, k, diff, torch.from_numpy(xt),
                                             torch.from_numpy(out), torch.from_numpy(z))
        np.testing.assert_allclose(x0_pred.numpy(), ref.x0_pred, atol=1e-12)
        np.testing.assert_allclose(x_prev.numpy(), ref.x_prev, atol=1e-12)


def test_core_tables_stay_float64_on_the_device():
    diff = Diffusion(SCHEDULES["linear"])
    assert diff.sqrt_alphas_cumprod.dtype == torch.float64
    np.testing.assert_array_equal(diff.sqrt_alphas_cumprod.numpy(),
                                  SCHEDULES["linear"].sqrt_alphas_cumprod)


def test_the_step_table_is_k_by_9_as_the_chain_docstring_says():
    """The chain's docstrings name the table's shape; this checks the shape they name."""
    sched = core.DiffusionSchedule.from_betas(core.linear_betas(20))
    for sampler in ("ddpm", "dpmpp-2m"):
        dev = DeviceCoefficients(make_coefficients(sched, sampler, 7))
        table = chain._step_table(dev, Diffusion(sched), torch.float32)
        assert table.shape == (7, 9) and table.dtype == torch.float32
    assert "(K, 9)" in chain.__doc__ and "(K, 9)" in chain._step_table.__doc__
