"""The Python API (nets.load → Pipeline) as the README shows it, and its agreement with the
commands: the same call behind both, so the same settings give the same digits."""

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample import run_main, tiny_model

import nets
from nets.checkpoint import CheckpointError, save_checkpoint
from nets.pixels import to_training_tensor
from nets.sampling import Conditioning, SampleOptions, SamplerSettings, labels_from_frequencies
from nets.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def write_run(run_dir: Path, conditional: bool, T: int = 20) -> Path:
    """A run directory of an untrained tiny model that trained on MNIST test[:1000]."""
    model = tiny_model(10 if conditional else 0)
    cfg = TrainConfig(timesteps=T, unet=model.config.to_dict(), conditional=conditional, split="test",
                      holdout=9000)
    save_checkpoint({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 3,
                     "config": asdict(cfg), "class_counts": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]},
                    run_dir / "checkpoint.pt")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {"cond": write_run(d / "cond", True), "uncond": write_run(d / "uncond", False)}


def test_pipeline_sample_gives_the_digits_the_command_writes(runs, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, err = run_main("--checkpoint", runs["cond"], "--n", "6", "--sampler", "ddim",
                         "--steps", "5", "--seed", "3", "--digit", "4", "--guidance", "2", "--out", out)
    assert code == 0, err
    pipe = nets.load(runs["cond"], device="cpu")
    got = pipe.sample(6, digit=4, guidance=2, sampler=SamplerSettings("ddim", steps=5), seed=3)
    with np.load(out) as f:
        np.testing.assert_array_equal(f["images"], got.images)
        np.testing.assert_array_equal(f["labels"], got.labels)
        assert str(f["sampler"]) == got.settings["sampler"] == "ddim" and int(f["steps"]) == 5


def test_samples_are_a_function_of_the_seed_with_the_requested_labels(runs):
    pipe = nets.load(runs["cond"], device="cpu", precision="fp32")
    fast = SamplerSettings("dpmpp-2m", steps=4)
    a, b, c = (pipe.sample(5, digit=7, sampler=fast, seed=s) for s in (1, 1, 2))
    assert a.images.shape == (5, 28, 28) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert (a.images != c.images).mean() > 0.3
    np.testing.assert_array_equal(a.labels, [7] * 5)
    np.testing.assert_array_equal(pipe.sample(12, digit="all", sampler=fast).labels, np.arange(12) % 10)
    drawn = pipe.sample(12, sampler=fast, seed=5)  # default: the class frequencies, seeded
    assert drawn.settings["digit"] == "frequencies" and drawn.settings["guidance"] == 1.0
    np.testing.assert_array_equal(drawn.labels, labels_from_frequencies(12, list(range(1, 11)), 5))


def test_as_tensor_is_the_uint8_images_mapped_exactly_to_the_networks_range(runs):
    gen = nets.load(runs["uncond"], device="cpu").sample(3, sampler=SamplerSettings("ddim", steps=3))
    x = gen.as_tensor()
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and x.abs().max() <= 1
    torch.testing.assert_close(x, to_training_tensor(gen.images), rtol=0, atol=0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: p["uncond"].sample(2, digit=3), "unconditional model"),
    (lambda p: p["uncond"].sample(2, guidance=2), "unconditional model"),
    (lambda p: p["cond"].sample(2, digit="12"), "'12' is not a class"),
    (lambda p: p["cond"].sample(0), "n must be a positive integer"),
    (lambda p: p["cond"].sample(2, sampler=SamplerSettings("ddim", steps=21)), "exceeds the model's T = 20"),
    (lambda p: p["cond"].sample(2, sampler=SamplerSettings("ddim", steps=3),
                                options=SampleOptions(cuda_graph=True)), "cuda_graph: needs a CUDA device"),
    (lambda p: p["cond"].sample(2, options=SampleOptions(cuda_graph=True)), "supports ddpm and ddim only"),
    (lambda p: p["cond"].invert(np.zeros((2, 28, 28), np.float32)), "must be uint8 images"),
    (lambda p: p["uncond"].invert(np.zeros((2, 28, 28), np.uint8), digit=3), "unconditional model"),
    (lambda p: p["cond"].decode(torch.zeros(2, 28, 28)), "latents must have shape"),
    (lambda p: p["cond"].inpaint(np.zeros((28, 28), np.uint8), np.ones((28, 28))), "bool mask"),
    (lambda p: p["cond"].interpolate(1, 2, frames=1), "frames must be >= 2"),
    (lambda p: p["cond"].with_guide(p["cond"], float("nan")), "must be finite"),
    (lambda p: p["cond"].with_guide(p["cond"]).sample(2, guidance=3), "set by with_guide"),
])
def test_bad_arguments_are_one_value_error_naming_the_problem(runs, call, message):
    pipes = {k: nets.load(v, device="cpu") for k, v in runs.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        call(pipes)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SamplerSettings("unipc"), "unknown sampler"),
    (lambda: SamplerSettings("dpmpp-2m", steps=2), "needs at least 3 steps"),
    (lambda: SamplerSettings("ddpm", eta=0.5), "eta: applies to the ddim sampler only"),
    (lambda: SamplerSettings("ddim", variance="beta"), "variance: applies to the ddpm sampler only"),
    (lambda: SamplerSettings("ddim", eta=2.0), "eta: must be in [0, 1]"),
    (lambda: SamplerSettings(spacing="cosine"), "unknown spacing"),
    (lambda: Conditioning(guidance=2.0), "guidance needs labels"),
    (lambda: Conditioning(np.array([0, -1])), "labels must be class indices >= 0"),
    (lambda: Conditioning(np.array([0.5])), "1-D integer array"),
    (lambda: SampleOptions(batch_size=0), "batch_size must be a positive integer"),
    (lambda: nets.InpaintSettings(resample=0), "resample must be >= 1"),
])
def test_the_settings_bundles_check_themselves_when_built(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        nets.load(tmp_path)
    with pytest.raises(ValueError, match="tpu"):
        nets.load(tmp_path, device="tpu")


def test_invert_then_decode_keeps_shapes_and_decode_is_deterministic(runs):
    pipe = nets.load(runs["cond"], device="cpu", precision="fp32")
    digits = pipe.sample(3, digit=1, sampler=SamplerSettings("ddim", steps=3)).images
    latents = pipe.invert(digits, steps=4)
    assert latents.shape == (3, 1, 28, 28) and torch.isfinite(latents).all()
    back = pipe.decode(latents, steps=4)
    assert back.shape == (3, 28, 28) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, pipe.decode(latents, steps=4))


def test_interpolation_between_seeds_starts_and_ends_at_their_decoded_latents(runs):
    pipe = nets.load(runs["uncond"], device="cpu", precision="fp32")
    frames, path = pipe.interpolate(4, 9, frames=5, steps=3)
    assert frames.shape == (5, 28, 28) and path.shape == (5, 1, 28, 28)
    end = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(path[-1:], end)
    np.testing.assert_array_equal(frames[-1:], pipe.decode(end, steps=3))


def test_inpainting_returns_the_known_pixels_exactly(runs):
    pipe = nets.load(runs["cond"], device="cpu")
    digit = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    known = nets.named_mask("left")
    out = pipe.inpaint(digit, known, settings=nets.InpaintSettings(n=2, steps=3, resample=2), digit=5)
    assert out.shape == (2, 28, 28)
    np.testing.assert_array_equal(out[:, known], np.broadcast_to(digit[known], (2, known.sum())))


def test_a_model_autoguided_by_itself_samples_exactly_as_alone(runs):
    """guide + w(main − guide) with main = guide is main, to the bit, for any w."""
    pipe = nets.load(runs["uncond"], device="cpu", precision="fp32")
    fast = SamplerSettings("ddim", steps=3)
    guided = pipe.with_guide(runs["uncond"], 3.0).sample(4, sampler=fast)
    np.testing.assert_array_equal(guided.images, pipe.sample(4, sampler=fast).images)
    assert guided.settings["autoguidance"] == 3.0


def test_evaluate_scores_samples_against_the_digits_the_model_never_trained_on(runs, mnist, weak_classifier):
    pipe = nets.load(runs["cond"], device="cpu")
    judge = nets.make_judge(mnist, "test", weak_classifier)
    report = pipe.evaluate(judge.real.images[:20], judge.real.labels[:20].astype(np.int64), judge=judge)
    assert report["real"]["count"] == 9000 and "never trained on" in report["real"]["reference"]
    assert report["metrics"]["count"] == 20 and report["real_floor"]["count"] == 20
    assert report["memorisation"]["training_count"] == 1000


def test_the_evaluate_command_and_pipeline_evaluate_give_the_same_report(runs, mnist, weak_classifier,
                                                                        tmp_path, capsys):
    """One code path: nets.evaluate --checkpoint writes the JSON of Pipeline.evaluate's report
    (all but the timings, which are measured)."""
    from nets import evaluate

    pipe = nets.load(runs["cond"], device="cpu", precision="fp32")
    gen = pipe.sample(12, sampler=SamplerSettings("ddim", steps=3), seed=2)
    samples = tmp_path / "s.npz"
    code, err = run_main("--checkpoint", runs["cond"], "--n", 12, "--sampler", "ddim", "--steps", 3,
                         "--seed", 2, "--precision", "fp32", "--out", samples)
    assert code == 0, err
    report_path = tmp_path / "r.json"
    assert evaluate.main(["--samples", str(samples), "--checkpoint", str(runs["cond"]), "--data-dir", mnist,
                          "--classifier", str(weak_classifier), "--nll-images", "0", "--device", "cpu",
                          "--json", str(report_path)]) == 0
    written = json.loads(report_path.read_text())
    judge = nets.make_judge(mnist, "test", weak_classifier)
    from nets.evaluation.samples import load_samples

    about = {"path": str(samples), **load_samples(samples)[1]}
    ours = pipe.evaluate(gen.images, gen.labels, judge=judge, about=about).to_json()
    for report in (written, ours):  # the timings are measured, not computed
        del report["eval_images_per_second"]
        report.pop("seconds", None)
    assert json.loads(json.dumps(ours)) == written


def test_evaluate_checks_the_images_before_reading_any_data(runs, monkeypatch):
    """The issue-25 defect: offline, bad images were an MnistUnavailableError (the data came first)."""
    import nets.pipeline

    def no_data(*args, **kwargs):
        raise AssertionError("the judge (and the data) was asked for before the images were checked")

    monkeypatch.setattr(nets.pipeline, "make_judge", no_data)
    pipe = nets.load(runs["cond"], device="cpu")
    with pytest.raises(ValueError, match="28, 28"):
        pipe.evaluate(np.zeros((5, 10, 10), np.uint8))


@pytest.mark.slow
def test_the_readme_snippet_runs_as_shown_on_a_run_the_trainer_wrote(tmp_path, mnist, weak_classifier):
    """Train a tiny run as a user would (it lands in runs/<timestamp>), then run the README's
    first Python block with only <name> filled in."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPM_DATA_DIR": mnist,
           "DDPM_CLASSIFIER": str(weak_classifier)}
    train = subprocess.run([sys.executable, "-m", "nets.train", "--split", "test", "--holdout", "9000",
                            "--max-steps", "2", "--batch-size", "8", "--base-channels", "8", "--timesteps",
                            "50", "--no-figures"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert train.returncode == 0, train.stderr
    run_dir = re.search(r'"run_dir": "([^"]+)"', train.stdout).group(1)  # the config it printed
    assert re.fullmatch(r"runs/\d{8}-\d{6}", run_dir) and (tmp_path / run_dir / "checkpoint.pt").exists()
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "runs/<name>" in snippet and len([line for line in snippet.splitlines() if line.strip()]) <= 8
    run = subprocess.run([sys.executable, "-c", snippet.replace("runs/<name>", run_dir)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fd, floor = map(float, run.stdout.split())
    assert fd > floor > 0
