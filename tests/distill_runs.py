"""What tests/test_distill.py and tests/test_consistency.py share: the tiny teacher both distil,
and the two end-to-end checks every ``nets.distill`` method must pass (a SIGTERM and a resume end
bit for bit where an unbroken run ends; two processes under torchrun match one)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import CHILD_ENV, run_command, tiny_flags
from test_distributed import TORCHRUN

from nets.checkpoint import load_checkpoint

TEACHER = [*tiny_flags(256, 16), "--no-preview", "--warmup-steps", "5", "--precision", "fp32",
           "--device", "cpu"]  # T = 50, conditional


def train_teacher(run_dir: Path, mnist: str) -> Path:
    """A 20-step teacher of TEACHER's flags, its last 1,000 test digits held out."""
    proc = run_command("nets.train", *TEACHER, "--data-dir", mnist, "--max-steps", 20, "--holdout", 1000,
                       "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def stop_at_step_10_and_resume(argv: list, tmp_path: Path, folder: str) -> str:
    """``nets.distill argv`` (16 steps a round, a log row per step) run whole, and again stopped
    by SIGTERM at step 10 (exit 143, the step saved in ``folder`` of the run) and resumed: the
    resumed run ends with the whole run's weights, bit for bit. The stopped run's last words."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_command("nets.distill", *argv, "--run-dir", whole).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "nets.distill", *map(str, argv), "--run-dir", broken],
                            stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    for line in proc.stderr:
        if line.startswith("step 10/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, rest
    assert 10 <= load_checkpoint(broken / folder)["step"] < 16
    proc = run_command("nets.distill", "--resume", broken)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, want = load_checkpoint(broken), load_checkpoint(whole)
    for key in ("model", "ema"):
        for name, tensor in want[key].items():
            assert torch.equal(got[key][name], tensor), f"{key}.{name}"
    return rest


def two_processes_match_one(argv: list, tmp_path: Path, lr_sum: float) -> None:
    """``nets.distill argv`` on one process at batch 16 and on two under torchrun at 8 each: the
    weights agree to ``lr_sum`` (the float rounding of a mean of 8 + 8 against one of 16 becomes,
    through Adam's division by √v̂, up to a step's lr in entries whose gradient is ~0), and all but
    a few entries to 1e-6."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_command("nets.distill", *argv, "--batch-size", 16, "--run-dir", one).returncode == 0
    argv = [*argv, "--batch-size", 8, "--run-dir", two]
    proc = subprocess.run([*TORCHRUN, "-m", "nets.distill", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env=CHILD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = load_checkpoint(two), load_checkpoint(one)
    for key in ("model", "ema"):
        diffs = torch.cat([(got[key][n] - t).abs().flatten() for n, t in want[key].items()])
        assert float(diffs.max()) <= lr_sum, key
        assert float((diffs > 1e-6).float().mean()) <= 0.05, key
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
