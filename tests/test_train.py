"""The training loop: over-fitting, repeatability, and the CLI end to end on real digits."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from hypothesis import given, settings
from hypothesis import strategies as st

import diffusion_core as core
from nets import cli, train
from nets.checkpoint import load_checkpoint, save_checkpoint
from nets.device import memory_format_for
from nets.diffusion import Diffusion
from nets.train import config_from_flags
from nets.training.config import TrainConfig, ema_decay_at, lr_at
from nets.training.flags import build_parser
from nets.training.step import Learner, draw_batch, epoch_permutation, train_step
from nets.unet import UNet, UNetConfig


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
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, lr_schedule="constant")
    assert lr_at(0, cfg, 6000) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 6000) == pytest.approx(1e-3)
    assert lr_at(5000, cfg, 6000) == 1e-3


schedule_lengths = st.tuples(st.integers(0, 300), st.integers(1, 3000)).map(
    lambda wd: (wd[0], wd[0] + wd[1]))  # (warm-up steps, end): at least one step after the warm-up


@settings(deadline=None)
@given(schedule_lengths)
def test_cosine_lr_is_the_warm_up_then_falls_monotonically_from_the_peak(lengths):
    warmup, end = lengths
    cosine, constant = (TrainConfig(lr=2e-3, warmup_steps=warmup, lr_schedule=s)
                        for s in ("cosine", "constant"))
    lrs = [lr_at(s, cosine, end) for s in range(end)]
    assert lrs[:warmup] == [lr_at(s, constant, end) for s in range(warmup)]
    assert lrs[warmup] == pytest.approx(2e-3)  # the peak, where the decay starts
    assert all(a >= b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1:], strict=True))
    assert lrs[-1] > 0  # the last step still learns; 0 would be at step `end`
    assert lr_at(end, cosine, end) == pytest.approx(0, abs=1e-18)


@settings(deadline=None)
@given(schedule_lengths)
def test_cosine_lr_is_point_symmetric_about_the_middle_of_the_decay(lengths):
    """(1 + cos(pi x)) / 2 + (1 + cos(pi (1 - x))) / 2 = 1: steps d after the warm-up and d before
    the end sum to the peak, so the midpoint (when the decay has an even length) is half of it."""
    warmup, end = lengths
    cfg = TrainConfig(lr=1.0, warmup_steps=warmup, lr_schedule="cosine")
    for d in range(0, end - warmup + 1, max(1, (end - warmup) // 7)):
        assert lr_at(warmup + d, cfg, end) + lr_at(end - d, cfg, end) == pytest.approx(1.0)
    if (end - warmup) % 2 == 0:
        assert lr_at((warmup + end) // 2, cfg, end) == pytest.approx(0.5)


@settings(deadline=None)
@given(schedule_lengths, st.floats(0, 1))
def test_cosine_lr_is_the_squared_cosine_of_half_the_angle(lengths, fraction):
    """Half-angle identity, (1 + cos t) / 2 = cos^2(t / 2): d steps into a decay of n, the lr is
    the peak times cos^2(pi d / 2n); flat at both ends, unlike a linear decay."""
    warmup, end = lengths
    n = end - warmup
    d = round(fraction * n)
    cfg = TrainConfig(lr=3e-3, warmup_steps=warmup, lr_schedule="cosine")
    assert lr_at(warmup + d, cfg, end) == pytest.approx(3e-3 * math.cos(math.pi * d / (2 * n)) ** 2,
                                                        rel=1e-9, abs=1e-15)


def test_a_cosine_run_logs_and_uses_the_schedule_and_a_resume_restretches_it(tmp_path, real_mnist_dir):
    """The lr column of metrics.jsonl is lr_at of each step with the run's end, the optimizer's
    last lr is that of the last step, and a resume to a later --max-steps decays to the new end."""
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--no-figures", "--log-every", "1", "--warmup-steps", "2", "--lr-schedule", "cosine",
            *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "cos", *args, "--max-steps", "6")
    assert code == 0
    cfg = TrainConfig(warmup_steps=2, lr_schedule="cosine")
    logged = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([lr_at(s, cfg, 6) for s in range(6)])
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["config"]["lr_schedule"] == "cosine"
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_at(5, cfg, 6))
    assert train.main(["--resume", str(run_dir), "--max-steps", "10"]) == 0
    logged = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[6:] == pytest.approx([lr_at(s, cfg, 10) for s in range(6, 10)])
    assert logged[6] > logged[5]  # the new end lifts the lr back up the longer curve


def test_ema_decay_warms_up_from_small_to_the_configured_value():
    cfg = TrainConfig(ema_decay=0.999)
    assert ema_decay_at(0, cfg) == pytest.approx(0.1)
    assert ema_decay_at(10**6, cfg) == 0.999


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(3, 5, 100, torch.device("cpu"))
    assert torch.equal(a, epoch_permutation(3, 5, 100, torch.device("cpu")))
    assert not torch.equal(a, epoch_permutation(3, 6, 100, torch.device("cpu")))
    assert sorted(a.tolist()) == list(range(100))


def test_precision_fp32_means_no_autocast_and_bf16_means_bfloat16():
    from nets import device as devices
    cpu = torch.device("cpu")
    assert devices.autocast_dtype("fp32", cpu) is None
    assert devices.autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        devices.autocast_dtype("fp16", cpu)


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16():
    from nets import device as devices
    cpu = torch.device("cpu")
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert devices.has_native_bf16(cpu) == native
    assert devices.autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)


def tiny_step_inputs(seed=0):
    torch.manual_seed(seed)
    cfg = TrainConfig(timesteps=50, batch_size=8, lr=1e-3, warmup_steps=1, conditional=False)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2)))
    with torch.no_grad():  # wake the zero-initialised output layers, so the network's arithmetic shows
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ema = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2)))
    ema.load_state_dict(model.state_dict())
    data = torch.rand(32, 1, 28, 28) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    batch = draw_batch(data, torch.zeros(32, dtype=torch.int64), torch.arange(8), slice(None),
                             gen, cfg)
    diffusion = Diffusion(core.DiffusionSchedule.from_betas(core.linear_betas(50)))
    return cfg, model, ema, torch.optim.AdamW(model.parameters(), lr=cfg.lr), diffusion, batch


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_train_step_returns_the_batch_loss_and_moves_weights_and_ema(amp_dtype):
    cfg, model, ema, opt, diffusion, batch = tiny_step_inputs()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        expected = diffusion.loss(model, batch.x0, batch.t, batch.noise).item()
    loss = train_step(Learner(model, model, ema, opt, diffusion, amp_dtype), batch, cfg.lr,
                      ema_decay_at(0, cfg), cfg.grad_clip)
    assert not loss.requires_grad and loss.dtype == torch.float32
    # bf16 rounds the network's arithmetic to 8 bits of mantissa: the loss to ~1 %
    assert loss.item() == pytest.approx(expected, rel=1e-6 if amp_dtype is None else 3e-2)
    assert (loss.item() != pytest.approx(expected, rel=1e-6)) == (amp_dtype is not None)  # autocast ran
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2
    # the EMA after step 0 (decay 0.1): 0.1 · old + 0.9 · new
    for old, new, avg in zip(before, model.parameters(), ema.parameters(), strict=True):
        torch.testing.assert_close(avg, 0.1 * old + 0.9 * new.detach(), rtol=1e-5, atol=1e-6)


def test_draw_batch_is_the_same_global_batch_split_over_ranks():
    cfg = TrainConfig(timesteps=50, conditional=True, label_dropout=0.5)
    data, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    idx = torch.randperm(16)[:8]
    whole = draw_batch(data, labels, idx, slice(None), torch.Generator().manual_seed(1), cfg)
    halves = [draw_batch(data, labels, idx, rows, torch.Generator().manual_seed(1), cfg)
              for rows in (slice(0, 4), slice(4, 8))]
    for field in ("x0", "t", "noise", "y"):
        torch.testing.assert_close(torch.cat([getattr(h, field) for h in halves]), getattr(whole, field))
    assert (whole.y == 10).any() and (whole.y < 10).any()  # some labels dropped, some kept


def test_precision_is_saved_and_may_change_when_a_run_resumes(tmp_path, real_mnist_dir):
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64",
            "--batch-size", "16", "--no-figures", *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "run", *args, "--max-steps", "2", "--precision", "bf16")
    assert code == 0
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"]["precision"] == "bf16"
    assert train.main(["--resume", str(run_dir), "--max-steps", "4", "--precision", "fp32"]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["precision"] == "fp32"
    assert all(np.isfinite(losses_of(run_dir)))


def test_memory_format_is_channels_last_only_for_fp32_on_cpu():
    cpu = torch.device("cpu")
    assert memory_format_for(cpu, None) == torch.channels_last
    assert memory_format_for(cpu, torch.bfloat16) == torch.contiguous_format
    assert memory_format_for(torch.device("cuda"), None) == torch.contiguous_format


def test_channels_last_training_gives_the_contiguous_losses(tmp_path, real_mnist_dir, monkeypatch, capsys):
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "128", "--batch-size", "16",
            "--max-steps", "8", "--log-every", "4", "--no-figures", "--precision", "fp32", *TINY_MODEL]
    assert run_train(tmp_path, "cl", *args)[0] == 0
    assert "fp32 (--precision fp32 on cpu), channels_last activations" in capsys.readouterr().err
    from nets.training import run as training_run
    monkeypatch.setattr(training_run, "memory_format_for", lambda device, amp: torch.contiguous_format)
    assert run_train(tmp_path, "contiguous", *args)[0] == 0
    assert "contiguous activations" in capsys.readouterr().err
    cl, contiguous = losses_of(tmp_path / "cl"), losses_of(tmp_path / "contiguous")
    assert len(cl) == 8
    np.testing.assert_allclose(cl, contiguous, rtol=1e-4)  # a layout, not a change of the math


def test_min_snr_weighting_trains_and_is_recorded_in_the_run(tmp_path, real_mnist_dir):
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--max-steps", "4", "--no-figures", *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "snr", *args, "--loss-weighting", "min-snr", "--min-snr-gamma", "2.5")
    assert code == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["loss_weighting"] == "min-snr" and saved["min_snr_gamma"] == 2.5
    assert all(np.isfinite(losses_of(run_dir)))
    assert losses_of(run_dir) != losses_of(run_train(tmp_path, "uniform", *args)[1])


def test_holdout_keeps_the_last_images_out_and_records_them(tmp_path, real_mnist_dir, capsys):
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--max-steps", "2", "--no-figures", "--holdout", "9000", *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "held", *args)
    assert code == 0
    err = capsys.readouterr().err
    assert "held out: MNIST test[1000:10000] (9000 images), never trained on" in err
    assert "data: 64 images" in err
    assert json.loads((run_dir / "config.json").read_text())["holdout"] == 9000


def test_the_checkpoint_records_the_training_images_per_digit(tmp_path, real_mnist_dir):
    # what nets.sample --digit frequencies draws labels from: the images trained on, not the held out
    from nets.data import load_mnist, training_and_held_out
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--max-steps", "1", "--no-figures", "--holdout", "9950", *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "counts", *args)
    assert code == 0
    trained, _ = training_and_held_out(10000, 64, 9950)
    labels = load_mnist(real_mnist_dir, "test").labels[trained]
    assert load_checkpoint(run_dir)["class_counts"] == np.bincount(labels, minlength=10).tolist()
    assert sum(load_checkpoint(run_dir)["class_counts"]) == 50


def test_keep_checkpoints_keeps_each_one_loadable_as_a_model(tmp_path, real_mnist_dir):
    from nets.checkpoint import load_model
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--max-steps", "5", "--checkpoint-every", "2", "--no-figures", "--keep-checkpoints",
            *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "keep", *args)
    assert code == 0
    kept = sorted(p.name for p in run_dir.glob("checkpoint-*.pt"))
    assert kept == ["checkpoint-000002.pt", "checkpoint-000004.pt", "checkpoint-000005.pt"]
    assert [load_model(run_dir / name).step for name in kept] == [2, 4, 5]
    plain = run_train(tmp_path, "plain", *args[:-1 - len(TINY_MODEL)], *TINY_MODEL)[1]
    assert not list(plain.glob("checkpoint-*.pt"))


@pytest.mark.parametrize("flag, attention_blocks", [("none", 1), ("14", 4), ("28,14", 7)])
def test_attention_resolutions_put_attention_where_asked(tmp_path, flag, attention_blocks):
    # mults 1,2 → sizes 28 and 14; one res block per level: 1 down and 2 up blocks per size carry it,
    # and the bottleneck always has one
    from nets.unet import AttentionBlock
    argv = ["--attention-resolutions", flag, *TINY_MODEL]
    cfg = config_from_flags(*cli.given_flags(build_parser(), argv))[0]
    model = UNet(UNetConfig.from_dict(cfg.unet))
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == attention_blocks


def test_a_checkpoint_from_before_min_snr_and_the_lr_decay_resumes_as_it_was_trained(tmp_path,
                                                                                     real_mnist_dir):
    """Its config lacks loss_weighting and lr_schedule: it resumes uniform with a constant lr,
    not with today's defaults, which would change its math halfway."""
    args = ["--data-dir", str(real_mnist_dir), "--split", "test", "--limit", "64", "--batch-size", "8",
            "--no-figures", *TINY_MODEL]
    code, run_dir = run_train(tmp_path, "old", *args, "--max-steps", "2")
    assert code == 0
    state = load_checkpoint(run_dir)
    for key in ("loss_weighting", "lr_schedule"):
        del state["config"][key]
    save_checkpoint(state, run_dir / "checkpoint.pt")
    assert train.main(["--resume", str(run_dir), "--max-steps", "3"]) == 0
    resumed = load_checkpoint(run_dir)["config"]
    assert resumed["loss_weighting"] == "uniform" and resumed["lr_schedule"] == "constant"
    assert json.loads((run_dir / "config.json").read_text())["lr_schedule"] == "constant"
