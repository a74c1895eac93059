"""Consistency tuning on the device and ``python -m nets.distill --method consistency``: the loss
gathers the core's tables (parity with a NumPy reference built from the core), the consistency
sampler returns exact samples of Gaussian data given the exact consistency function, and the
command's folder, checkpoint record, defaults, warnings, resume and bad input."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import run_command, tiny_unet
from distill_runs import stop_at_step_10_and_resume, train_teacher, two_processes_match_one
from test_sample import MU, S, assert_moments
from torch import nn

import diffusion_core as core
import nets
from nets.checkpoint import load_checkpoint
from nets.diffusion import Diffusion, as_table, make_schedule
from nets.distillation import ConsistencyLoss, DistillConfig
from nets.pipeline import DistilledStepsWarning
from nets.sampling import ChainOptions, DeviceCoefficients, Network, SamplerSettings, sample
from nets.training.config import TrainConfig, lr_at

T = 50
TUNE = ["--method", "consistency", "--device", "cpu", "--log-every", "2", "--checkpoint-every", "2"]


# ---------------------------------------------------------------------------------------------
# The loss against the core


def numpy_loss(schedule, model_x0, x0, t_drawn, noise, stage, stages=8, draw="lognormal", teacher_x0=None):
    """The tuning loss from the core's functions alone, float64: the reference (``teacher_x0``:
    consistency distillation, x_r one DDIM jump with the teacher's clipped x̂0)."""
    d = int(np.prod(x0.shape[1:]))
    T = schedule.num_timesteps
    table = core.lognormal_timestep_table(schedule) if draw == "lognormal" else np.maximum(np.arange(T), 1)
    t = table[t_drawn]
    r = core.ect_pair_timesteps(schedule, t, stage)
    xt, xr = core.q_sample(schedule, x0, t, noise), core.q_sample(schedule, x0, r, noise)
    if teacher_x0 is not None:
        xr = core.ddim_jump(schedule, xt, t, r, np.clip(teacher_x0(xt, t), -1, 1))
    f_t = core.consistency_function(schedule, xt, t, model_x0(xt, t))
    f_r = core.consistency_function(schedule, xr, r, model_x0(xr, r))
    distance = core.pseudo_huber(f_t - f_r, core.pseudo_huber_scale(d))
    return np.mean(core.consistency_weights(schedule, t, r) * distance)


def x0_of(model, schedule, objective):
    """The model's x̂0 as the core reads its output (float32 in, as on the device)."""
    def x0(x, t):
        with torch.no_grad():
            x32 = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28)
            out = model(x32, torch.tensor(t)).reshape(x.shape).double().numpy()
        convert = core.predict_x0_from_v if objective == "v" else core.predict_x0_from_eps
        return convert(schedule, x, t, out)
    return x0


@pytest.mark.parametrize("draw, target", [("lognormal", "data"), ("uniform", "data"),
                                          ("lognormal", "teacher")])
def test_the_loss_is_the_cores_weighted_pseudo_huber_distance_at_each_stage(draw, target):
    schedule = make_schedule("linear", 200)
    model, teacher = tiny_unet(seed=0), tiny_unet(seed=1)
    student = Diffusion(schedule, "v")
    teacher_net = Network(teacher, Diffusion(schedule, "eps")) if target == "teacher" else None
    loss = ConsistencyLoss(student, 8, 784, draw, teacher_net)
    model_x0 = x0_of(model, schedule, "v")
    teacher_x0 = x0_of(teacher, schedule, "eps") if target == "teacher" else None

    rng = np.random.default_rng(0)
    x0, noise = (a.astype(np.float32).astype(np.float64)  # the values the device sees
                 for a in (rng.uniform(-1, 1, (6, 784)), rng.normal(size=(6, 784))))
    t_drawn = np.array([0, 3, 50, 120, 180, 199])
    for step, end, stage in ((0, 800, 0), (450, 800, 4), (799, 800, 7), (5000, 800, 7)):
        loss.at_step(step, end)
        assert loss.stage == stage
        with torch.no_grad():
            def image(a):
                return torch.tensor(a, dtype=torch.float32).reshape(6, 1, 28, 28)
            got = loss.loss(model, image(x0), torch.tensor(t_drawn), image(noise))
        want = numpy_loss(schedule, model_x0, x0, t_drawn, noise, stage, draw=draw, teacher_x0=teacher_x0)
        assert float(got) == pytest.approx(want, rel=2e-4), stage  # float32 on the device


def test_the_target_side_carries_no_gradient():
    """f at (x_r, r) is θ⁻: only f at (x_t, t) is differentiated (a model whose output is its
    input times a weight: the gradient is the one of the online branch alone)."""
    schedule = make_schedule("linear", 50)

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, x, t):
            return self.w * x

    model = Scale()
    student = Diffusion(schedule, "x0").double()
    loss = ConsistencyLoss(student, 4, 4, "uniform").double()
    x0 = torch.full((3, 1, 2, 2), 0.4, dtype=torch.float64)
    noise, t = torch.ones_like(x0), torch.tensor([10, 30, 49])
    loss.at_step(3, 4)
    value = loss.loss(model, x0, t, noise)
    value.backward()
    r = loss.pairs[3][t]
    xt, xr = student.q_sample(x0, t, noise), student.q_sample(x0, r, noise)
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    f_t = loss.c_skip[t].view(-1, 1, 1, 1) * xt + loss.c_out[t].view(-1, 1, 1, 1) * w * xt
    f_r = (loss.c_skip[r].view(-1, 1, 1, 1) * xr + loss.c_out[r].view(-1, 1, 1, 1) * 0.5 * xr)
    sq = ((f_t - f_r) ** 2).flatten(1).sum(1)
    c = loss.huber_c
    manual = torch.mean(loss.weights[3][t] * (torch.sqrt(sq + c * c) - c))
    manual.backward()
    assert float(model.w.grad) == pytest.approx(float(w.grad), rel=1e-6)  # the two forms of the distance


def test_a_schedule_of_one_step_has_no_pair():
    with pytest.raises(ValueError, match="T >= 2"):
        ConsistencyLoss(Diffusion(make_schedule("linear", 1), "v"), 8, 4)


# ---------------------------------------------------------------------------------------------
# The consistency sampler against Gaussian data


class GaussianConsistencyOracle(nn.Module):
    """An ε-model whose x̂0 makes f the exact consistency function of x0 ~ N(μ, s²): f* is the
    ODE's affine flow to t_min, F* = (f* − c_skip·x)/c_out, ε̂ = (x − α F*)/σ."""

    def __init__(self, schedule: core.DiffusionSchedule):
        super().__init__()
        abar = schedule.alphas_cumprod
        c_skip, c_out = core.consistency_scalings(schedule, np.arange(schedule.num_timesteps))
        for name, table in (("abar", abar), ("c_skip", c_skip), ("c_out", c_out)):
            self.register_buffer(name, as_table(table))
        self.abar_min = float(abar[0])

    def forward(self, x, t):
        def col(table):
            return table[t].reshape(-1, 1, 1, 1).to(x.dtype)

        a = col(self.abar)
        scale = torch.sqrt(a * S**2 + 1 - a)
        f = math.sqrt(self.abar_min) * MU + math.sqrt(self.abar_min * S**2 + 1 - self.abar_min) * (
            x - torch.sqrt(a) * MU) / scale
        c_out = col(self.c_out)
        x0 = torch.where(c_out > 0, (f - col(self.c_skip) * x) / c_out.clamp_min(1e-300), x)
        return (x - torch.sqrt(a) * x0) / torch.sqrt(1 - a)


def consistency_moments(schedule, timesteps):
    """Mean and variance of multistep consistency sampling with f*, from x_T ~ N(0, 1): each call
    is f* (affine), each re-noising q(x_τ | x_{t_min})."""
    abar, s2 = schedule.alphas_cumprod, S**2

    def flow(m, v, t):  # f*(x) = α_min μ + k (x − α_t μ), k = scale_min/scale_t
        k = math.sqrt(abar[0] * s2 + 1 - abar[0]) / math.sqrt(abar[t] * s2 + 1 - abar[t])
        return math.sqrt(abar[0]) * MU + k * (m - math.sqrt(abar[t]) * MU), k * k * v

    down = sorted(timesteps, reverse=True)
    m, v = flow(0.0, 1.0, down[0])
    for tau in down[1:]:
        ratio = abar[tau] / abar[0]
        m, v = flow(math.sqrt(ratio) * m, ratio * v + 1 - ratio, tau)
    return m, v


@pytest.mark.parametrize("calls", [1, 2, 4])
def test_consistency_sampling_with_the_exact_function_draws_the_gaussian(calls):
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    settings = SamplerSettings("consistency", steps=calls)
    table = settings.table(schedule)
    gen = torch.Generator().manual_seed(calls)
    x_T = torch.randn((4096, 1, 2, 2), generator=gen, dtype=torch.float64)
    net = Network(GaussianConsistencyOracle(schedule), Diffusion(schedule))
    out = sample(net, DeviceCoefficients(table), x_T,
                 lambda k, like: torch.randn(like.shape, generator=gen, dtype=like.dtype),
                 ChainOptions(clip_x0=False))
    mean, var = consistency_moments(schedule, table.timesteps)
    # the data's own marginal at t_min, but for x_T ~ N(0, 1) in place of q(x_T) (ᾱ_T = 4e-5)
    assert mean == pytest.approx(math.sqrt(schedule.alphas_cumprod[0]) * MU, abs=2e-3)
    assert var == pytest.approx(schedule.alphas_cumprod[0] * S**2 + 1 - schedule.alphas_cumprod[0], rel=1e-3)
    assert_moments(out.images.flatten().numpy(), mean, var)


def test_the_consistency_sampler_defaults_to_two_calls_at_the_cores_times_and_checks_given_ones():
    settings = SamplerSettings("consistency")
    assert settings.steps_for(1000) == 2 and settings.steps_for(2) == 1
    assert settings.describe(1) == "consistency 1 call"
    schedule = make_schedule("linear", 1000)
    assert list(settings.table(schedule).timesteps) == [999, 350]
    given = SamplerSettings("consistency", times=(100, 500, 999))
    assert list(given.table(schedule).timesteps) == [999, 500, 100]
    assert given.describe(3) == "consistency 3 calls at t = 999, 500, 100"
    assert given.record(3)["times"] == [100, 500, 999]
    for kwargs, message in (({"times": (5, 3)}, "ascending"), ({"times": (0, 9)}, "above 0"),
                            ({"times": (3, 9), "steps": 3}, "2 times for 3 calls")):
        with pytest.raises(ValueError, match=message):
            SamplerSettings("consistency", **kwargs)
    with pytest.raises(ValueError, match="consistency sampler only"):
        SamplerSettings("ddim", times=(3, 9))
    with pytest.raises(ValueError, match="not an index"):
        SamplerSettings("consistency", times=(3, 1000)).table(schedule)


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, mnist):
    return train_teacher(tmp_path_factory.mktemp("teacher") / "run", mnist)


@pytest.fixture(scope="module")
def tuned(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "out"
    proc = run_command("nets.distill", "--teacher", teacher, *TUNE, "--steps-per-round", 6, "--run-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


def test_a_tuning_leaves_a_complete_consistency_model_in_its_folder(tuned, teacher):
    out, stderr = tuned
    assert "consistency tuning of" in stderr and "8 stages" in stderr
    for name in ("checkpoint.pt", "metrics.jsonl", "loss.png", "samples.png", "preview.png"):
        assert (out / "consistency" / name).exists(), name
    state = load_checkpoint(out)
    record = state["consistency"]
    assert record["complete"] and record["calls"] == 2 and record["t_min"] == 0
    schedule = make_schedule("linear", T)
    assert record["times"] == {str(k): core.consistency_timesteps(schedule, k).tolist() for k in (1, 2, 4)}
    assert record["teacher"] == str(teacher / "checkpoint.pt") and record["time_draw"] == "lognormal"
    assert record["target"] == "data"
    assert state["config"]["objective"] == "v" and state["config"]["precision"] == "fp32"
    assert state["config"]["holdout"] == 1000 and state["step"] == 6
    assert json.loads((out / "config.json").read_text())["method"] == "consistency"
    assert "nets.sample --steps K" in stderr.splitlines()[-2]
    start, after = load_checkpoint(teacher)["ema"], state["model"]
    rel = [float((after[k] - v).norm() / (v.norm() + 1e-12))
           for k, v in start.items() if v.is_floating_point()]
    assert 0 < np.median(rel) < 0.2  # it started from the teacher's EMA


def test_sampling_a_consistency_model_runs_its_calls_by_default_and_warns_off_them(tuned, tmp_path):
    out, _ = tuned
    proc = run_command("nets.sample", "--checkpoint", out, "--n", 4, "--device", "cpu",
                       "--out", tmp_path / "s.npz")
    assert proc.returncode == 0, proc.stderr
    assert "consistency 2 calls" in proc.stderr and "warning" not in proc.stderr
    proc = run_command("nets.sample", "--checkpoint", out, "--n", 4, "--steps", 1, "--device", "cpu",
                       "--out", tmp_path / "s1.npz")
    assert proc.returncode == 0 and "consistency 1 call" in proc.stderr and "warning" not in proc.stderr
    proc = run_command("nets.sample", "--checkpoint", out, "--n", 4, "--sampler", "ddim", "--steps", 4,
                       "--device", "cpu", "--out", tmp_path / "d.npz")
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert proc.returncode == 0 and len(warning) == 1 and "is a consistency model" in warning[0]


def test_the_python_api_tunes_and_samples_a_consistency_model(teacher, tmp_path):
    run = nets.distill(DistillConfig(teacher=str(teacher), run_dir=str(tmp_path / "cm"), method="consistency",
                                     steps_per_round=2, device="cpu", figures=False, target="teacher"))
    assert load_checkpoint(run)["consistency"]["target"] == "teacher"
    assert run.method == "consistency" and run.steps == 2
    pipe = nets.load(run, device="cpu")
    times = tuple(core.consistency_timesteps(make_schedule("linear", T), 2).tolist())
    assert pipe.default_sampler == SamplerSettings("consistency", steps=2, times=times)
    assert "a consistency model (2 calls by default)" in pipe.describe()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = pipe.sample(4, sampler=SamplerSettings("consistency", steps=1), seed=1)
    assert one.settings["sampler"] == "consistency" and one.settings["steps"] == 1
    with pytest.warns(DistilledStepsWarning, match="is a consistency model"):
        pipe.sample(4, sampler=SamplerSettings())


def test_evaluate_edit_and_the_speed_benchmark_take_a_consistency_model(tuned, mnist, weak_classifier,
                                                                       tmp_path):
    from benchmarks import sample_speed

    out, _ = tuned
    samples = tmp_path / "s.npz"
    proc = run_command("nets.sample", "--checkpoint", out, "--n", 20, "--device", "cpu", "--out", samples)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_command("nets.evaluate", "--samples", samples, "--checkpoint", out, "--data-dir", mnist,
                       "--classifier", weak_classifier, "--nll-images", 0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_command("nets.edit", "invert", "--checkpoint", out, "--data-dir", mnist, "--index", "0-1",
                       "--device", "cpu", "--steps", 4, "--out", tmp_path / "inv.npz")
    assert proc.returncode == 0 and "is a consistency model" in proc.stderr, proc.stderr[-2000:]
    report = tmp_path / "speed.json"
    sample_speed.main(["--quick", "--checkpoint", str(out), "--batch-sizes", "2", "--repeats", "1",
                       "--warmup", "0", "--json", str(report)])
    rows = json.loads(report.read_text())["results"]
    assert {r["sampler"] for r in rows} == {"consistency-2"}


@pytest.mark.parametrize("argv, message", [
    (["--to-steps", "2"], "--to-steps: applies to --method progressive only"),
    (["--from-steps", "8"], "--from-steps: applies to --method progressive only"),
    (["--stages", "0"], "--stages"),
    (["--time-draw", "cubic"], "invalid choice"),
    (["--target", "oracle"], "invalid choice"),
])
def test_bad_tuning_settings_are_one_line_and_exit_2(teacher, tmp_path, argv, message):
    proc = run_command("nets.distill", "--teacher", teacher, *TUNE, "--run-dir", tmp_path / "o", *argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()


def test_progressive_refuses_the_tunings_settings_and_a_consistency_model_is_no_teacher(tuned, teacher,
                                                                                          tmp_path):
    out, _ = tuned
    for argv, message in ((["--stages", "4"], "--stages: applies to --method consistency only"),
                          (["--time-draw", "uniform"], "--time-draw: applies to --method consistency only"),
                          (["--target", "teacher"], "--target: applies to --method consistency only")):
        proc = run_command("nets.distill", "--teacher", teacher, "--run-dir", tmp_path / "p",
                           "--device", "cpu", *argv)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = run_command("nets.distill", "--teacher", out, *TUNE, "--run-dir", tmp_path / "again")
    assert proc.returncode == 2 and "already a consistency model" in proc.stderr, proc.stderr
    proc = run_command("nets.train", "--resume", out / "consistency")
    assert proc.returncode == 2 and "a round of nets.distill" in proc.stderr


def test_a_finished_tuning_resumed_has_nothing_left_and_changes_nothing(tuned):
    out, _ = tuned
    before = (out / "checkpoint.pt").read_bytes()
    proc = run_command("nets.distill", "--resume", out, "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "is done" in proc.stderr and (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow
def test_sigterm_mid_tuning_saves_and_a_resume_ends_where_an_unbroken_tuning_ends(teacher, tmp_path):
    """SIGTERM → checkpoint, exit 143; --resume finishes with the weights of a tuning that was never
    stopped (bit for bit: the stage follows the step, and the random streams are in the checkpoint)."""
    argv = ["--teacher", teacher, *TUNE, "--steps-per-round", 16, "--no-figures", "--log-every", 1]
    last_words = stop_at_step_10_and_resume(argv, tmp_path, "consistency")
    assert "interrupted at step" in last_words and "--resume" in last_words


@pytest.mark.slow
def test_two_processes_tune_like_one_with_the_global_batch(teacher, tmp_path):
    """Under torchrun the target pass (no gradient) runs through the DDP-wrapped model beside the
    online pass; the tuning matches one process on the global batch (one round of 4 steps)."""
    lr_sum = sum(lr_at(s, TrainConfig(lr=1e-3, warmup_steps=50), 4) for s in range(4))
    argv = ["--teacher", teacher, *TUNE, "--steps-per-round", 4, "--no-figures"]
    two_processes_match_one(argv, tmp_path, lr_sum)
