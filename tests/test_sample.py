"""Sampling: the samplers against an exactly solvable data distribution, and python -m nets.sample.

The analytic tests use x0 ~ N(μ, s²) per pixel, for which the exact ε-prediction is
E[ε | x_t] = √(1-ᾱ_t)(x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t). Every reverse step is then affine in x_t,
so the sampler's output is exactly Gaussian with a mean and variance that a scalar recursion over
the core's tables gives (`exact_output_moments`, an independent reference written here).
"""

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import run_in_process
from torch import nn

import diffusion_core as core
from nets import sample as sample_cli
from nets.checkpoint import save_checkpoint
from nets.diffusion import Diffusion, as_table
from nets.sampling import (
    ChainOptions,
    DeviceCoefficients,
    Network,
    SampleOptions,
    class_labels,
    generate,
    make_coefficients,
    sample,
)
from nets.training.config import TrainConfig
from nets.unet import UNet, UNetConfig

MU, S = 0.3, 0.2  # the data distribution N(μ, s²) of every pixel




class GaussianEpsOracle(nn.Module):
    """The exact ε-prediction E[ε | x_t] for x0 ~ N(μ, s²): what a perfect network outputs."""

    def __init__(self, schedule: core.DiffusionSchedule):
        super().__init__()
        self.register_buffer("abar", as_table(schedule.alphas_cumprod))

    def forward(self, x, t):
        a = self.abar[t].reshape(-1, 1, 1, 1).to(x.dtype)
        return torch.sqrt(1 - a) * (x - torch.sqrt(a) * MU) / (a * S**2 + 1 - a)


def exact_output_moments(coeffs: core.ReverseCoefficients) -> tuple[float, float]:
    """Mean and variance of the sampler's output from x_T ~ N(0, 1), by the affine recursion
    x_prev = P·x_t + Q + σ·z (m ← P m + Q, v ← P² v + σ²), unclipped."""
    m, v = 0.0, 1.0
    for k in range(coeffs.num_steps):
        sa, s1 = coeffs.sqrt_alphas_cumprod[k], coeffs.sqrt_one_minus_alphas_cumprod[k]
        g = s1 / (sa**2 * S**2 + s1**2)  # ε̂ = g (x − √ᾱ μ)
        p_x0, q_x0 = (1 - s1 * g) / sa, s1 * g * MU  # x̂0 = p x + q
        p_eps, q_eps = (1 - sa * p_x0) / s1, -sa * q_x0 / s1  # ε̂ recomputed from x̂0
        P = coeffs.x0_coef[k] * p_x0 + coeffs.eps_coef[k] * p_eps
        Q = coeffs.x0_coef[k] * q_x0 + coeffs.eps_coef[k] * q_eps
        m, v = P * m + Q, P * P * v + coeffs.sigma[k] ** 2
    return m, v


N_VALUES = 4096 * 4  # 4096 images of 2×2 independent pixels


def run_oracle(sampler, steps=None, seed=0, **kw):
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    table = make_coefficients(schedule, sampler, steps, **kw)
    coeffs = DeviceCoefficients(table)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((4096, 1, 2, 2), generator=gen, dtype=torch.float64)
    out = sample(Network(GaussianEpsOracle(schedule), Diffusion(schedule)), coeffs, x_T,
                 lambda k, like: torch.randn(like.shape, generator=gen, dtype=like.dtype),
                 ChainOptions(clip_x0=False))
    return out.images.flatten().numpy(), table


# CLT tolerances at 4 standard errors for N_VALUES draws: the mean ± 4s/√n,
# the variance ± 4·v·√(2/(n−1)) (Gaussian data: Var(sample variance) = 2v²/(n−1)).
def assert_moments(values, mean, var):
    n = len(values)
    assert abs(values.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(values.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1))


# The sampler's own discretisation bias (from exact_output_moments, T = 1000 linear):
# DDPM σ²=β̃: variance −3.7% (β̃ under-estimates the reverse variance); σ²=β: +0.9%;
# DDIM η=0 over all 1000 steps: −1.5%; means within 4e-4 of μ in every case.
@pytest.mark.parametrize("sampler, kw, var_bias", [
    ("ddpm", {"variance": "posterior"}, 0.04),
    ("ddpm", {"variance": "beta"}, 0.01),
    ("ddim", {"eta": 0.0}, 0.02),
])
def test_sampler_with_exact_eps_recovers_gaussian_data_mean_and_variance(sampler, kw, var_bias):
    values, table = run_oracle(sampler, **kw)
    mean, var = exact_output_moments(table)
    assert abs(mean - MU) < 1e-3 and abs(var / S**2 - 1) < var_bias
    assert_moments(values, mean, var)  # the torch sampler is the exact process
    n = len(values)
    assert abs(values.mean() - MU) < 4 * S / math.sqrt(n) + 1e-3
    assert abs(values.var(ddof=1) / S**2 - 1) < 4 * math.sqrt(2 / (n - 1)) + var_bias


def test_ddim_respaced_matches_its_exact_moments_and_deviates_with_few_steps():
    values, table = run_oracle("ddim", steps=50, eta=0.0)
    mean, var = exact_output_moments(table)
    assert abs(mean - MU) < 1e-3  # the mean is kept exactly; the variance is not (−24% at 50)
    assert_moments(values, mean, var)
    assert var < 0.9 * S**2


def test_ddim_eta_zero_is_deterministic_given_x_T():
    a, _ = run_oracle("ddim", steps=20, seed=0)
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    coeffs = DeviceCoefficients(make_coefficients(schedule, "ddim", 20))
    x_T = torch.randn((4096, 1, 2, 2), generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    b = sample(Network(GaussianEpsOracle(schedule), Diffusion(schedule)), coeffs, x_T,
               lambda k, like: torch.randn_like(like), ChainOptions(clip_x0=False)).images.flatten().numpy()
    np.testing.assert_array_equal(a, b)  # other noise draws, same output


# ---------------------------------------------------------------------------------------------
# A tiny random U-Net: ranges and seeds

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=())


def tiny_model(num_classes=0):
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**TINY.to_dict(), "num_classes": num_classes,
                               "channel_mults": (1, 2), "attention_resolutions": ()}))
    nn.init.normal_(model.out[-1].weight, std=0.05)  # the zero-initialised head would output 0
    return model.eval()


def tiny_diffusion(T=20):
    return Diffusion(core.DiffusionSchedule.from_betas(core.linear_betas(T)))


@pytest.mark.parametrize("sampler, steps, kw", [("ddpm", None, {}), ("ddpm", 5, {"variance": "beta"}),
                                                ("ddim", 5, {"eta": 0.0}), ("ddim", 7, {"eta": 1.0})])
def test_samplers_give_finite_images_in_range_repeatable_by_seed(sampler, steps, kw):
    model, diffusion = tiny_model(), tiny_diffusion()
    coeffs = DeviceCoefficients(make_coefficients(diffusion.schedule, sampler, steps, **kw))
    x_T = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    net = Network(model, diffusion)
    out = sample(net, coeffs, x_T, lambda k, like: torch.randn_like(like)).images
    assert out.shape == (6, 1, 28, 28) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    a = generate(net, coeffs, 10, 1, options=SampleOptions(batch_size=4))
    b = generate(net, coeffs, 10, 1, options=SampleOptions(batch_size=4))
    c = generate(net, coeffs, 10, 2, options=SampleOptions(batch_size=4))
    assert a.images.shape == (10, 28, 28) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert (a.images != c.images).mean() > 0.5


def test_generate_records_a_trajectory_of_the_first_batch():
    model, diffusion = tiny_model(), tiny_diffusion()
    coeffs = DeviceCoefficients(make_coefficients(diffusion.schedule, "ddpm"))
    g = generate(Network(model, diffusion), coeffs, 5, 0,
                 options=SampleOptions(batch_size=3, trajectory=True))
    assert g.trajectory.shape == (11, 3, 28, 28) and g.trajectory.dtype == np.uint8
    assert g.trajectory_timesteps[0] == 20 and g.trajectory_timesteps[-1] == 0
    np.testing.assert_array_equal(g.trajectory[-1], g.images[:3])


def test_class_labels_cycle_or_repeat():
    np.testing.assert_array_equal(class_labels(12, "all"), [*range(10), 0, 1])
    np.testing.assert_array_equal(class_labels(3, "7"), [7, 7, 7])


# ---------------------------------------------------------------------------------------------
# python -m nets.sample (in process; the subprocess round trip is in test_evaluate.py)


def write_checkpoint(path, num_classes=0, unet_overrides=None):
    model = tiny_model(num_classes)
    unet = {**model.config.to_dict(), **(unet_overrides or {})}
    cfg = asdict(TrainConfig(timesteps=20, unet=unet, conditional=num_classes > 0))
    state = {"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {},
             "step": 7, "config": cfg}
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"uncond": write_checkpoint(d / "u.pt"), "cond": write_checkpoint(d / "c.pt", 10),
            "dir": d}


def run_main(*argv):
    """``nets.sample`` in this process on the CPU without a progress line: (exit code, stderr)."""
    return run_in_process(sample_cli.main, *argv, "--no-progress", "--device", "cpu")


def test_cli_writes_npz_grid_and_trajectory(checkpoints, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--n", "9",
                         "--batch-size", "4", "--sampler", "ddim", "--steps", "5", "--out", out,
                         "--trajectory")
    assert code == 0, err
    assert "images/s" in err
    with np.load(out, allow_pickle=False) as f:
        assert f["images"].shape == (9, 28, 28) and f["images"].dtype == np.uint8
        assert str(f["sampler"]) == "ddim" and int(f["steps"]) == 5
        assert float(f["images_per_second"]) > 0 and f["trajectory"].shape[1:] == (4, 28, 28)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert (tmp_path / "s_reverse.png").stat().st_size > 0


def test_cli_png_only_and_raw_weights(checkpoints, tmp_path, capsys):
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--n", "4", "--precision", "bf16",
                         "--weights", "raw", "--steps", "3", "--out", tmp_path / "g.png")
    assert code == 0, err
    assert (tmp_path / "g.png").exists() and not (tmp_path / "g.npz").exists()


def test_cli_conditional_digit_and_guidance(checkpoints, tmp_path, capsys):
    out = tmp_path / "c.npz"
    code, err = run_main("--checkpoint", checkpoints["cond"], "--n", "4", "--digit", "3",
                         "--guidance", "2", "--steps", "3", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        np.testing.assert_array_equal(f["labels"], [3, 3, 3, 3])
        assert float(f["guidance"]) == 2.0


@pytest.mark.parametrize("args, message", [
    (["--out", "x.jpg"], "extension must be .npz or .png"),
    (["--digit", "3"], "unconditional"),
    (["--guidance", "2"], "unconditional"),
    (["--steps", "21"], "exceeds"),
    (["--eta", "0.5"], "--eta: applies to the ddim sampler only"),
    (["--sampler", "ddim", "--variance", "beta"], "applies to the ddpm sampler only"),
    (["--n", "0"], "must be >= 1"),
    (["--sampler", "ddim", "--cuda-graph"], "needs a CUDA device"),
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
])
def test_cli_bad_flags_exit_2_with_a_message(checkpoints, tmp_path, capsys, args, message):
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--out",
                         tmp_path / "o.npz", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_bad_conditional_digit(checkpoints, tmp_path, capsys):
    code, err = run_main("--checkpoint", checkpoints["cond"], "--digit", "12",
                         "--out", tmp_path / "o.npz")
    assert code == 2 and "'12' is not a class" in err


def test_cli_checkpoints_of_other_models_exit_2(checkpoints, tmp_path, capsys):
    wrong_shapes = write_checkpoint(tmp_path / "w.pt", unet_overrides={"base_channels": 16})
    other = save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {"lr": 1}},
                            tmp_path / "other.pt")
    bad_heads = write_checkpoint(tmp_path / "h.pt", unet_overrides={
        "attention_resolutions": [14], "num_heads": 3})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    empty_dir = tmp_path / "run"
    empty_dir.mkdir()
    for path, message in [(wrong_shapes, "do not fit the U-Net"),
                          (other, "not a DDPM checkpoint"), (bad_heads, "not a DDPM checkpoint"),
                          (garbage, "refus"),
                          (empty_dir, "checkpoint not found")]:
        code, err = run_main("--checkpoint", path, "--out", tmp_path / "o.npz")
        assert code == 2 and message in err and "Traceback" not in err, (path, err)


def test_cli_without_sampler_flags_uses_the_documented_default(checkpoints, tmp_path, capsys):
    """SDE-DPM-Solver++ 2M at 20 steps (docs/results.md: the best quality per network call);
    the output says so, and --sampler ddpm is the paper's chain over all T."""
    out = tmp_path / "d.npz"
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--n", "3", "--out", out)
    assert code == 0, err
    assert "sampler: sde-dpmpp-2m 20 steps" in err
    with np.load(out) as f:
        assert str(f["sampler"]) == "sde-dpmpp-2m" and int(f["steps"]) == 20
    code, err = run_main("--checkpoint", checkpoints["uncond"], "--n", "3", "--sampler", "ddpm",
                         "--out", out)
    assert code == 0 and "sampler: ddpm 20 steps" in err  # T = 20: all of them
