"""Smoke tests of the experiment runners in experiments/: each runs end to end at a tiny budget
(seconds of training, a dozen samples, a weak classifier) and writes the results it promises.
The numbers are meaningless at this budget; what is checked is that the runner still works with
today's commands and API, so the studies in docs/ stay reproducible."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from test_sample import tiny_model

from nets.checkpoint import load_checkpoint, save_checkpoint
from nets.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of an untrained tiny conditional model (T = 20) that trained on test[:1000]."""
    run = tmp_path_factory.mktemp("run")
    model = tiny_model(10)
    cfg = TrainConfig(timesteps=20, unet=model.config.to_dict(), conditional=True, split="test", holdout=9000)
    save_checkpoint({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 1,
                     "config": asdict(cfg), "class_counts": [100] * 10}, run / "checkpoint.pt")
    return run


def run_experiment(script, *args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_recipe_study_runs_one_arm_at_a_tiny_budget(tmp_path, mnist, weak_classifier):
    out = tmp_path / "study"
    run_experiment("recipe_study.py", out, "baseline", "--data-dir", mnist, "--classifier", weak_classifier,
                   "--minutes", "0.03", "--n", "12", "--holdout", "9000", "--threads", "1", "--workers", "1")
    [row] = json.loads((out / "study.json").read_text())
    assert row["arm"] == "baseline" and row["steps"] >= 1 and row["fd"] > 0
    assert (out / "study_quality.png").exists() and (out / "study_grids.png").exists()


@pytest.mark.slow
def test_solver_sweep_runs_a_two_row_grid(tmp_path, mnist, weak_classifier, tiny_run):
    out = tmp_path / "sweep"
    run_experiment("solver_sweep.py", tiny_run, out, "--data-dir", mnist, "--classifier", weak_classifier,
                   "--n", "10", "--only", "ddim:trailing:3,dpmpp-2m:logsnr:3")
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["sampler"], r["calls"]) for r in rows] == [("ddim", 3), ("dpmpp-2m", 3)]
    assert (out / "solver_quality.png").exists() and (out / "solver_grids.png").exists()


@pytest.mark.slow
def test_editing_study_runs_through_the_python_api(tmp_path, mnist, weak_classifier, tiny_run):
    out = tmp_path / "editing.json"
    run_experiment("editing_study.py", tiny_run, out, "--data-dir", mnist, "--classifier", weak_classifier,
                   "--first", "9990", "--digits", "2", "--n", "1", "--steps", "3", "--resample", "1",
                   "--ks", "2,3", "--masks", "left")
    result = json.loads(out.read_text())
    assert set(result["round_trip"]) == {"2", "3"} and result["inpaint"]["left"]["completions"] == 2


@pytest.mark.slow
def test_distillation_study_scores_a_teacher_its_students_and_a_consistency_model(tmp_path, mnist,
                                                                                  weak_classifier, tiny_run):
    distilled, tuned = tmp_path / "distilled", tmp_path / "tuned"
    for method in (["--from-steps", "4", "--to-steps", "1"], ["--method", "consistency"]):
        folder = distilled if "--to-steps" in method else tuned
        proc = subprocess.run([sys.executable, "-m", "nets.distill", "--teacher", tiny_run, *method,
                               "--steps-per-round", "2", "--device", "cpu", "--no-figures",
                               "--data-dir", mnist, "--run-dir", folder], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "study"
    run_experiment("distillation_study.py", tiny_run, out, "--distilled", distilled, "--consistency", tuned,
                   "--consistency-calls", "1,2", "--consistency-fp32", "--consistency-second", "10",
                   "--data-dir", mnist, "--classifier", weak_classifier, "--n", "10", "--teacher-calls", "4")
    rows = json.loads((out / "study.json").read_text())
    last = load_checkpoint(tiny_run)["config"]["timesteps"] - 1
    assert [(r["model"], r["calls"], r.get("precision"), r.get("times")) for r in rows] == [
        ("teacher", 4, None, None)] * 3 + [("student", 1, None, None), ("student", 2, None, None)] + [
        ("consistency", 1, None, None), ("consistency", 1, "fp32", None), ("consistency", 2, None, None),
        ("consistency", 2, "fp32", None), ("consistency", 2, None, [10, last])]
    assert all(r["fd"] > 0 and r["seconds_per_1000"] > 0 for r in rows)
    assert (out / "distillation_quality.png").exists() and (out / "distillation_grids.png").exists()


@pytest.mark.slow
def test_dataset_study_writes_sets_every_reader_takes_and_scores_a_run(tmp_path, mnist, weak_classifier,
                                                                       tiny_run):
    from nets.data import load_dataset

    sets = tmp_path / "sets"
    run_experiment("dataset_study.py", "sets", sets, "--data-dir", mnist, "--rows", "60")
    png = load_dataset(str(sets / "mnist-png"))
    train = load_dataset("cifar10", sets / "tinted-bin", "train", download=False)
    test = load_dataset("cifar10", sets / "tinted-bin", "test", download=False)
    folder = load_dataset(str(sets / "tinted-png"))
    assert (len(png), len(train), len(test), len(folder)) == (30, 30, 30, 60)
    assert png.info.shape == (1, 28, 28) and train.info.shape == folder.info.shape == (3, 32, 32)
    assert folder.info.class_names[:2] == ("0-red", "1-green")
    assert sorted(folder.images.sum(axis=(1, 2, 3)).tolist()) == sorted(
        np.concatenate([train.images, test.images]).sum(axis=(1, 2, 3)).tolist())  # the same 60 images
    out = tmp_path / "score"
    run_experiment("dataset_study.py", "score", out, tiny_run, "--reference", tiny_run,
                   "--classifier", weak_classifier, "--data-dir", mnist)
    report = json.loads((out / f"{tiny_run.name}.json").read_text())
    assert report["metrics"]["count"] == 1000 and report["real_floor"]["frechet_distance"] > 0
