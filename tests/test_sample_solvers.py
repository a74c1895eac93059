"""The few-step solvers on the device: the torch chain against the core's chained steps, their
samples of exactly solvable data, and their flags in python -m nets.sample."""

import numpy as np
import pytest
import torch
from test_sample import MU, GaussianEpsOracle, S, checkpoints, run_main, tiny_model  # noqa: F401

import diffusion_core as core
from nets.diffusion import Diffusion
from nets.sampling import (
    MULTISTEP,
    ChainOptions,
    DeviceCoefficients,
    Network,
    make_coefficients,
    min_steps,
    sample,
)

SCHEDULE = core.DiffusionSchedule.from_betas(core.linear_betas(1000))


def core_chain(coeffs, x_T, output_fn, noise, objective="eps"):
    """The core's reverse_step chained, with the x̂0 history: the reference of the torch loop."""
    x, history = x_T, []
    for k in range(coeffs.num_steps):
        z = noise[k] if coeffs.sigma[k] != 0 else None
        step = core.reverse_step(coeffs, k, x, output_fn(x, coeffs.timesteps[k]), z, objective, True,
                                 x0_history=tuple(history))
        x, history = step.x_prev, [step.x0_pred, *history][:2]
    return x


@pytest.mark.parametrize("sampler", sorted(MULTISTEP))
@pytest.mark.parametrize(("steps", "spacing"), [(10, "logsnr"), (7, "trailing"), (4, "linspace")])
def test_the_torch_multistep_chain_equals_the_chained_core_steps(sampler, steps, spacing):
    table = make_coefficients(SCHEDULE, sampler, steps, spacing=spacing)
    oracle = GaussianEpsOracle(SCHEDULE)
    rng = np.random.default_rng(3)
    x_T = rng.standard_normal((5, 1, 2, 2))
    noise = rng.standard_normal((steps, 5, 1, 2, 2))
    calls = []

    def noise_fn(k, like):
        calls.append(k)
        return torch.from_numpy(noise[k])

    ours = sample(Network(oracle, Diffusion(SCHEDULE)), DeviceCoefficients(table), torch.from_numpy(x_T),
                  noise_fn).images.numpy()

    def output_fn(x, t):
        return oracle(torch.from_numpy(np.asarray(x)), torch.full((5,), int(t))).numpy()

    np.testing.assert_allclose(ours, core_chain(table, x_T, output_fn, noise), rtol=0, atol=1e-12)
    assert calls == ([] if not MULTISTEP[sampler][1] else list(range(steps - 1)))  # z only where σ > 0


@pytest.mark.parametrize("sampler", sorted(MULTISTEP))
@pytest.mark.parametrize("objective", ["x0", "v"])
def test_the_solvers_run_v_and_x0_models_under_classifier_free_guidance(sampler, objective):
    """A conditional U-Net at guidance w = 3 on a zero-terminal-SNR schedule: the torch chain
    (float32) against the core's float64 steps given the same guided outputs."""
    schedule = core.DiffusionSchedule.from_betas(core.rescale_zero_terminal_snr(core.linear_betas(40)))
    model = tiny_model(num_classes=10)
    table = make_coefficients(schedule, sampler, 8, spacing="logsnr")
    rng = np.random.default_rng(4)
    x_T = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    noise = rng.standard_normal((8, 3, 1, 28, 28)).astype(np.float32)
    y, w = torch.tensor([1, 4, 7]), 3.0
    ours = sample(Network(model, Diffusion(schedule, objective)), DeviceCoefficients(table),
                  torch.from_numpy(x_T), lambda k, like: torch.from_numpy(noise[k]),
                  ChainOptions(y=y, guidance=w)).images.numpy()

    @torch.inference_mode()
    def guided(x, t):
        x, t = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.full((3,), int(t))
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
        return (uncond + w * (cond - uncond)).double().numpy()  # Ho & Salimans (2022) eq. 6

    reference = core_chain(table, x_T.astype(np.float64), guided, noise, objective)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-4)  # float32 against float64
    assert np.all(np.isfinite(ours)) and np.abs(ours).max() <= 1.0


def empirical_moments(table, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((4096, 1, 2, 2), generator=gen, dtype=torch.float64)
    out = sample(Network(GaussianEpsOracle(SCHEDULE), Diffusion(SCHEDULE)), DeviceCoefficients(table), x_T,
                 lambda k, like: torch.randn(like.shape, generator=gen, dtype=like.dtype),
                 ChainOptions(clip_x0=False)).images.flatten().numpy()
    return out.mean(), out.var(ddof=1)


# Measured (n = 16,384 values, log-SNR spacing, T = 1000 linear; s.e. of the variance ratio
# 1.1 %): variance / s² - 1 at 10 steps: DDIM -0.41, DDPM -0.59, 2M +0.05, 3M +0.30, SDE-2M -0.01;
# at 20 steps: DDIM -0.21, 2M +0.05, 3M +0.02, SDE-2M +0.08.
@pytest.mark.parametrize(("sampler", "steps", "tolerance"), [
    ("dpmpp-2m", 10, 0.12), ("sde-dpmpp-2m", 10, 0.12), ("dpmpp-2m", 20, 0.12),
    ("dpmpp-3m", 20, 0.12), ("sde-dpmpp-2m", 20, 0.15)])
def test_few_step_solvers_sample_the_variance_that_ddim_misses(sampler, steps, tolerance):
    mean, var = empirical_moments(make_coefficients(SCHEDULE, sampler, steps, spacing="logsnr"))
    _, ddim_var = empirical_moments(make_coefficients(SCHEDULE, "ddim", steps, spacing="logsnr"))
    assert abs(mean - MU) < 0.01
    assert abs(var / S**2 - 1) < tolerance < abs(ddim_var / S**2 - 1)


def test_min_steps_is_order_plus_one_and_one_for_one_step_samplers():
    assert [min_steps(s) for s in ("ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "sde-dpmpp-2m")] == [1, 1, 3, 4, 3]


def test_cuda_graph_refuses_a_multistep_table():
    table = DeviceCoefficients(make_coefficients(SCHEDULE, "dpmpp-2m", 5))
    with pytest.raises(ValueError, match="cuda_graph"):
        sample(Network(GaussianEpsOracle(SCHEDULE), Diffusion(SCHEDULE)), table, torch.zeros(1, 1, 2, 2),
               lambda k, like: like, ChainOptions(cuda_graph=True))


# ---------------------------------------------------------------------------------------------
# python -m nets.sample


@pytest.mark.parametrize("sampler", sorted(MULTISTEP))
def test_cli_samples_with_each_solver(checkpoints, tmp_path, capsys, sampler):  # noqa: F811
    out = tmp_path / "s.npz"
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--n", "6", "--sampler",
                         sampler, "--steps", "5", "--spacing", "logsnr", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        assert f["images"].shape == (6, 28, 28) and str(f["sampler"]) == sampler
        assert int(f["steps"]) == 5 and str(f["spacing"]) == "logsnr"


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "dpmpp-2m", "--eta", "0.5"], "--eta: applies to the ddim sampler only"),
    (["--sampler", "sde-dpmpp-2m", "--variance", "beta"], "applies to the ddpm sampler only"),
    (["--sampler", "dpmpp-2m", "--steps", "2"], "dpmpp-2m needs at least 3 steps"),
    (["--sampler", "dpmpp-3m", "--steps", "3"], "dpmpp-3m needs at least 4 steps"),
    (["--sampler", "dpmpp-2m", "--steps", "0"], "must be >= 1"),
    (["--sampler", "dpmpp-2m", "--cuda-graph"], "supports ddpm and ddim only"),
    (["--sampler", "unipc"], "invalid choice: 'unipc'"),
    (["--spacing", "cosine"], "invalid choice: 'cosine'"),
])
def test_cli_bad_solver_combinations_exit_2_with_one_line(checkpoints, tmp_path, capsys, args,  # noqa: F811
                                                          message):
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--out", tmp_path / "o.npz",
                         *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
