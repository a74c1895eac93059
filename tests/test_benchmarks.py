"""Speed never changes the math: the fast sampler paths against slower references, and the two
benchmark scripts end to end on a tiny model (seconds, not minutes)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import diffusion_core as core
from nets import device as devices
from nets.diffusion import Diffusion
from nets.sampling import ChainOptions, DeviceCoefficients, Network, make_coefficients, sample
from nets.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is run from the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import sample_speed, train_speed, workload  # noqa: E402
from benchmarks.naive import naive_sample  # noqa: E402

SCHEDULE = core.DiffusionSchedule.from_betas(core.linear_betas(20))
TINY = ["--base-channels", "8", "--channel-mults", "1,2"]
CHAINS = [("ddpm", None, 0.0), ("ddim", 6, 0.0), ("ddim", 6, 0.5)]




def random_unet(seed: int = 0) -> UNet:
    """A small U-Net with every weight random (the default zero-initialised output is all 0)."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def fixed_noise(steps: int, shape, seed: int = 1, device="cpu") -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, generator=gen, device=device) for _ in range(steps)]


class TanhNet(nn.Module):
    """A network with a closed form: output = tanh(x)·(t+1)/T, to run the chain in NumPy too."""

    def forward(self, x, t):
        return torch.tanh(x) * ((t + 1).to(x.dtype) / SCHEDULE.num_timesteps)[:, None, None, None]


@pytest.mark.parametrize("sampler,steps,eta,objective", [(*c, "eps") for c in CHAINS] + [
    ("ddpm", None, 0.0, "v")])
def test_optimised_sampler_gives_the_naive_samplers_images(sampler, steps, eta, objective):
    model, x_T = random_unet(), torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    coeffs = make_coefficients(SCHEDULE, sampler, steps, eta=eta)
    z = fixed_noise(len(coeffs.timesteps), x_T.shape)
    fast = sample(Network(model, Diffusion(SCHEDULE, objective)), DeviceCoefficients(coeffs), x_T,
                  lambda k, like: z[k]).images
    slow = naive_sample(model, SCHEDULE, sampler, steps, x_T, lambda k, like: z[k], objective, eta)
    assert fast.dtype == slow.dtype == torch.float32 and fast.shape == slow.shape == x_T.shape
    assert fast.abs().max() > 0.1  # a real chain, not the zero output of an untrained net
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps,eta", CHAINS)
def test_float64_sample_equals_chained_core_reverse_steps(sampler, steps, eta):
    coeffs = make_coefficients(SCHEDULE, sampler, steps, eta=eta)
    rng = np.random.default_rng(3)
    x_T = rng.standard_normal((2, 1, 4, 4))
    z = rng.standard_normal((len(coeffs.timesteps), 2, 1, 4, 4))
    ours = sample(Network(TanhNet(), Diffusion(SCHEDULE)), DeviceCoefficients(coeffs), torch.from_numpy(x_T),
                  lambda k, like: torch.from_numpy(z[k])).images
    x = x_T
    for k, t in enumerate(coeffs.timesteps):
        output = np.tanh(x) * (t + 1) / SCHEDULE.num_timesteps
        x = core.reverse_step(coeffs, k, x, output, z[k]).x_prev
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), x, rtol=0, atol=1e-12)


def test_cuda_graph_needs_cuda_tensors():
    coeffs = DeviceCoefficients(make_coefficients(SCHEDULE, "ddim", 4))
    with pytest.raises(ValueError, match="cuda_graph: needs a CUDA device"):
        sample(Network(TanhNet(), Diffusion(SCHEDULE)), coeffs, torch.zeros(1, 1, 4, 4),
               lambda k, like: torch.zeros_like(like), ChainOptions(cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; this "
                    "machine has none (the test runs wherever torch.cuda.is_available())")
@pytest.mark.parametrize("sampler,steps,eta", CHAINS)
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_cuda_graph_and_eager_give_the_same_images_for_a_seed(sampler, steps, eta, autocast_dtype):
    device = torch.device("cuda")
    model, diffusion = random_unet().to(device), Diffusion(SCHEDULE).to(device)
    coeffs = DeviceCoefficients(make_coefficients(SCHEDULE, sampler, steps, eta=eta)).to(device)
    runs, states = [], []
    for graph in (False, True):
        gen = torch.Generator(device=device).manual_seed(7)
        x_T = torch.randn((5, 1, 28, 28), generator=gen, device=device)
        runs.append(sample(Network(model, diffusion, autocast_dtype), coeffs, x_T,
                           lambda k, like, gen=gen: torch.randn(like.shape, generator=gen, device=device),
                           ChainOptions(num_snapshots=3, cuda_graph=graph)))
        states.append(gen.get_state())
    eager, graphed = runs
    torch.testing.assert_close(graphed.images, eager.images, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(graphed.snapshots, eager.snapshots, rtol=1e-6, atol=1e-6)
    assert torch.equal(states[0], states[1])  # the same draws from the generator


def test_train_speed_runs_tiny_and_writes_json(tmp_path, capsys):
    out = tmp_path / "train.json"
    train_speed.main([*TINY, "--quick", "--batch-sizes", "4", "--repeats", "2", "--warmup", "0",
                      "--data-dir", str(tmp_path), "--json", str(out)])
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    p = result["settings"]["default_precision"]  # --quick times the trainer's own default: auto
    assert p == ("bf16" if devices.has_native_bf16(torch.device("cpu")) else "fp32")
    assert list(rows) == ["naive", f"project {p}", f"project {p} cl", "naive input", "project input"]
    assert "x naive" in table and result["data"].startswith("random uint8")  # no MNIST in tmp_path
    assert f"by default (--precision auto = {p})" in table
    assert result["default_speedup_vs_naive"] == {"4": rows[f"project {p}"]["speedup_vs_naive"]}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["speedup_vs_naive"] > 0
    for name in ("naive", f"project {p}", f"project {p} cl"):
        assert rows[name]["flops_per_image"] == result["flops_per_image"] > 0
        assert rows[name]["fraction_of_peak"] > 0
    assert rows[f"project {p} cl"]["speedup_vs_contiguous"] > 0
    assert rows["naive"]["speedup_vs_naive"] == 1.0 and result["peaks"]["fp32"]["flops_per_s"] > 0


def test_sample_speed_runs_tiny_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sample.json"
    sample_speed.main([*TINY, "--quick", "--timesteps", "20", "--steps", "6", "--batch-sizes", "3",
                       "--repeats", "2", "--warmup", "0", "--json", str(out)])
    capsys.readouterr()
    result = json.loads(out.read_text())
    rows = {(r["sampler"], r["variant"]): r for r in result["results"]}
    p = result["settings"]["default_precision"]
    assert set(rows) == {(s, v) for s in ("ddpm-6", "ddim-6")
                         for v in ("naive", f"project {p}", f"network {p}", f"stub {p}")}
    project = rows["ddpm-6", f"project {p}"]
    assert result["default_speedup_vs_naive"] == {
        f"{k} b3": rows[k, f"project {p}"]["speedup_vs_naive"] for k in ("ddpm-6", "ddim-6")}
    assert project["window"] == 2 and project["images_per_s"] > 0
    assert project["flops_per_image"] == 6 * result["flops_per_image_per_call"]
    assert project["overhead"] < 1 and 0 < project["overhead_stub"]


def test_precision_auto_becomes_the_devices_default_and_duplicates_go():
    args = train_speed.build_parser().parse_args(["--precision", "auto,fp32,bf16,auto", "--device", "cpu"])
    args = workload.resolve(args, train_speed.DEFAULTS, train_speed.QUICK)
    native = devices.has_native_bf16(torch.device("cpu"))
    assert args.default_precision == ("bf16" if native else "fp32")
    assert args.precision == (["bf16", "fp32"] if native else ["fp32", "bf16"])


@pytest.mark.parametrize("script, extra", [
    ("sample_speed.py", ["--timesteps", "20", "--steps", "4", "--batch-sizes", "2"]),
    ("train_speed.py", ["--batch-sizes", "2", "--no-channels-last", "--data-dir", "."]),
])
def test_a_script_runs_by_path_from_anywhere_with_passive_openmp(tmp_path, script, extra):
    """`python benchmarks/<script>.py`, the form the issue names, from another folder."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY, "--quick",
                           "--repeats", "1", "--warmup", "0", *extra, "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["machine"]["omp_wait_policy"] == "PASSIVE"


def test_sample_speed_times_the_few_step_solvers(tmp_path, capsys):
    out = tmp_path / "solvers.json"
    sample_speed.main([*TINY, "--quick", "--timesteps", "20", "--samplers", "dpmpp-2m,dpmpp-3m,sde-dpmpp-2m",
                       "--batch-sizes", "3", "--repeats", "2", "--warmup", "0", "--json", str(out)])
    capsys.readouterr()
    result = json.loads(out.read_text())
    p = result["settings"]["default_precision"]
    rows = {(r["sampler"], r["variant"]): r for r in result["results"]}
    assert {s for s, _ in rows} == {"dpmpp-2m-10", "dpmpp-3m-10", "sde-dpmpp-2m-10"}  # default K = 10
    for s in ("dpmpp-2m-10", "dpmpp-3m-10", "sde-dpmpp-2m-10"):
        assert rows[s, f"project {p}"]["images_per_s"] > 0 and rows[s, f"project {p}"]["overhead_stub"] > 0


def test_preview_cost_runs_tiny_and_writes_json(tmp_path, capsys, real_mnist_dir):
    from benchmarks import preview_cost

    out = tmp_path / "preview.json"
    assert preview_cost.main(["--quick", "--rounds", "1", "--threads", "1", "--data-dir", str(real_mnist_dir),
                              "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rounds"]) == 1 and result["median_ratio"] > 0
    assert "previews cost" in capsys.readouterr().out
