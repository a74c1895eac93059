"""The training loop: over-fitting, repeatability, and the CLI end to end on real digits."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffusion_core as core
from nets import train
from nets.diffusion import Diffusion
from nets.unet import UNet, UNetConfig

TINY_MODEL = ["--base-channels", "8", "--channel-mults", "1,2", "--timesteps", "50"]


def test_overfitting_a_fixed_batch_drops_the_loss_tenfold():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_resolutions=()))
    diffusion = Diffusion(core.DiffusionSchedule.from_betas(core.linear_betas(100)))
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    t, noise = torch.randint(0, 100, (8,)), torch.randn(8, 1, 28, 28)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = diffusion.loss(model, x0, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10


def run_train(tmp_path, name, *extra):
    run_dir = tmp_path / name
    code = train.main(["--run-dir", str(run_dir), *extra])
    return code, run_dir


def losses_of(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_gives_identical_first_20_losses(tmp_path, real_mnist_dir):
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "256",
            "--batch-size", "16", "--max-steps", "20", "--log-every", "7", "--no-figures",
            *TINY_MODEL]
    assert run_train(tmp_path, "a", *args)[0] == 0
    assert run_train(tmp_path, "b", *args)[0] == 0
    a, b = losses_of(tmp_path / "a"), losses_of(tmp_path / "b")
    assert len(a) == 20 and a == b
    c = run_train(tmp_path, "c", *args, "--seed", "1")[1]
    assert losses_of(c) != a


def test_cli_end_to_end_writes_checkpoint_metrics_and_three_figures(tmp_path, real_mnist_dir):
    from PIL import Image  # matplotlib depends on Pillow

    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "nets.train", "--data-dir", str(real_mnist_dir), "--split", "test",
         "--limit", "300", "--batch-size", "32", "--epochs", "4", "--run-dir", str(run_dir),
         "--num-samples", "16", *TINY_MODEL],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "img/s" in proc.stderr and "ETA" in proc.stderr
    assert len(losses_of(run_dir)) == 4 * (300 // 32)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 36 and set(state) >= {"model", "ema", "optimizer", "config", "rng"}
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 32
    for name, min_size in [("loss.png", (400, 200)), ("samples.png", (50, 50)),
                           ("reverse.png", (300, 300))]:
        with Image.open(run_dir / name) as img:
            img.verify()
        with Image.open(run_dir / name) as img:
            assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], name
    grid = np.asarray(Image.open(run_dir / "samples.png").convert("L"))
    assert grid.std() > 0  # not a blank picture


def test_lr_warms_up_linearly_then_stays_at_the_peak():
    cfg = train.TrainConfig(lr=1e-3, warmup_steps=10)
    assert train.lr_at(0, cfg) == pytest.approx(1e-4)
    assert train.lr_at(9, cfg) == pytest.approx(1e-3)
    assert train.lr_at(5000, cfg) == 1e-3


def test_ema_decay_warms_up_from_small_to_the_configured_value():
    cfg = train.TrainConfig(ema_decay=0.999)
    assert train.ema_decay_at(0, cfg) == pytest.approx(0.1)
    assert train.ema_decay_at(10**6, cfg) == 0.999


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = train.epoch_permutation(3, 5, 100, torch.device("cpu"))
    assert torch.equal(a, train.epoch_permutation(3, 5, 100, torch.device("cpu")))
    assert not torch.equal(a, train.epoch_permutation(3, 6, 100, torch.device("cpu")))
    assert sorted(a.tolist()) == list(range(100))
