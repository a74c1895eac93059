"""Training and distilling as library calls (issue 25): ``nets.fit``, ``nets.resume`` and
``nets.distill`` as docs/api.md shows them, their typed configs (every field a flag, every flag a
field), bad input as a ValueError with the process alive, and a resume that keeps its arithmetic."""

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import CHILD_ENV, run_in_process, tiny_flags

import nets
from nets import distill as distill_cli
from nets import train
from nets.checkpoint import CheckpointError, load_checkpoint
from nets.fields import flag_fields, resumable_fields
from nets.training.flags import COMMAND_FLAGS, UNET_FLAGS
from nets.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=()).to_dict()


def tiny_train(mnist, **changes) -> nets.TrainConfig:
    values = dict(data_dir=mnist, split="test", limit=64, batch_size=8, timesteps=50, unet=TINY_UNET,
                  figures=False, preview=False, precision="fp32", device="cpu")
    return nets.TrainConfig(**{**values, **changes})


def dests(parser) -> set[str]:
    return set(vars(parser.parse_args([])))


# ---- the configs and their flags ------------------------------------------------------------------

def test_every_train_config_field_has_its_flag_and_every_flag_a_field():
    flags = dests(train.build_parser()) - set(UNET_FLAGS) - set(COMMAND_FLAGS)
    assert flags == flag_fields(nets.TrainConfig)
    assert set(UNET_FLAGS) <= {f.name for f in fields(UNetConfig)}


def test_every_distill_config_field_has_its_flag_and_every_flag_a_field():
    assert dests(distill_cli.build_parser()) - {"resume"} == flag_fields(nets.DistillConfig)


def test_a_resume_may_change_only_the_length_machine_and_outputs():
    length_and_machine = {"epochs", "max_steps", "max_minutes", "device", "precision", "data_dir"}
    assert length_and_machine <= resumable_fields(nets.TrainConfig)
    fixed = {"lr", "batch_size", "seed", "timesteps", "objective", "unet"}
    assert not fixed & resumable_fields(nets.TrainConfig)
    assert not {"teacher", "to_steps", "lr", "seed"} & resumable_fields(nets.DistillConfig)


@pytest.mark.parametrize(("make", "field"), [
    (lambda: nets.TrainConfig(batch_size=0), "batch_size"),
    (lambda: nets.TrainConfig(lr=float("nan")), "lr"),
    (lambda: nets.TrainConfig(precision="fp16"), "precision"),
    (lambda: nets.TrainConfig(split="validation"), "split"),
    (lambda: nets.TrainConfig(conditional="yes"), "conditional"),
    (lambda: nets.TrainConfig(timesteps=10, sample_steps=20), "sample_steps"),
    (lambda: nets.TrainConfig(unet={"base_channels": 3}), "unet"),
    (lambda: nets.TrainConfig(preview_every="2h"), "preview_every"),
    (lambda: nets.DistillConfig(objective="eps"), "objective"),
    (lambda: nets.DistillConfig(to_steps=0), "to_steps"),
    (lambda: nets.SamplerSettings("unipc"), "sampler"),
])
def test_a_bad_value_is_a_value_error_naming_its_field(make, field):
    with pytest.raises(ValueError, match=f"^{field}: ") as info:
        make()
    assert isinstance(info.value, nets.ConfigError) and info.value.field == field


# ---- fit, resume, distill ----------------------------------------------------------------------

def test_fit_trains_and_returns_a_run_that_load_takes_and_resume_continues(tmp_path, mnist):
    run = nets.fit(tiny_train(mnist, max_steps=3, run_dir=str(tmp_path / "run")))
    assert (run.step, run.trained_steps, run.run_dir) == (3, 3, tmp_path / "run")
    digits = nets.load(run, device="cpu").sample(2, sampler=nets.SamplerSettings("ddim", steps=2)).images
    assert digits.shape == (2, 28, 28)
    more = nets.resume(run, max_steps=5)
    assert (more.step, more.trained_steps) == (5, 2)
    assert more.config.precision == "fp32"  # a resume keeps the run's arithmetic
    assert nets.resume(run, max_steps=5).trained_steps == 0  # nothing left: says so, trains nothing
    with pytest.raises(nets.ConfigError, match="lr"):
        nets.resume(run, lr=1.0)  # the recipe of a run is fixed


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, mnist):
    with pytest.raises(nets.ConfigError, match="exceeds the 4 training images") as info:
        nets.fit(tiny_train(mnist, limit=4, max_steps=1, run_dir=str(tmp_path / "a" / "b")))
    assert info.value.field == "batch_size"
    assert not (tmp_path / "a").exists()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        nets.distill(nets.DistillConfig(teacher=str(tmp_path / "missing"), run_dir=str(tmp_path / "d")))
    assert not (tmp_path / "d").exists()
    with pytest.raises(nets.ConfigError, match="teacher: required"):
        nets.distill(nets.DistillConfig(run_dir=str(tmp_path / "d")))


def test_previews_and_figures_fit_any_number_of_timesteps(tmp_path, mnist):
    """A model of T = 1 trains, previews (DDIM at its one step: the preview's solver needs 3) and
    draws its figures; it used to end in a traceback after training ("steps 10 exceeds T = 1")."""
    run = nets.fit(tiny_train(mnist, timesteps=1, max_steps=2, figures=True, preview=True, preview_every="1",
                              num_samples=4, run_dir=str(tmp_path / "t1")))
    assert run.step == 2
    for name in ("preview.png", "samples.png", "reverse.png", "loss.png"):
        assert (tmp_path / "t1" / name).stat().st_size > 0, name


def test_a_command_line_resume_keeps_device_and_precision_unless_given_and_then_says_so(tmp_path, mnist):
    """The bug of issue 25: nets.distill --resume set --precision from the parser's default
    (auto: bf16 on a CPU with AMX, and on every GPU), so a fp32 round resumed under bf16."""
    run_dir = tmp_path / "run"
    code, err = run_in_process(train.main, *tiny_flags(), "--data-dir", mnist, "--max-steps", 2,
                               "--precision", "fp32", "--run-dir", run_dir)
    assert code == 0, err
    code, err = run_in_process(train.main, "--resume", run_dir, "--max-steps", 3)
    assert code == 0 and "fp32 (--precision fp32 on cpu)" in err, err
    assert load_checkpoint(run_dir)["config"]["precision"] == "fp32"
    code, err = run_in_process(train.main, "--resume", run_dir, "--max-steps", 4, "--precision", "auto")
    assert code == 0 and "--resume: precision fp32 → auto, as the command line asks" in err, err
    assert load_checkpoint(run_dir)["config"]["precision"] == "auto"
    code, err = run_in_process(train.main, "--resume", run_dir, "--max-steps", 5, "--lr", "1e-3")
    assert code == 2 and "error: --lr: a resumed run keeps its own settings; drop --lr" in err


@pytest.mark.slow
def test_the_api_snippet_of_the_docs_runs_as_shown(tmp_path, mnist):
    """docs/api.md's training block in a fresh interpreter, with its configs made tiny (a small
    U-Net on 64 digits, no figures; progressive distillation from 8 steps) and its budgets cut to
    3 s, nothing else changed."""
    doc = (ROOT / "docs" / "api.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "nets.fit(" in b)
    assert "nets.distill(nets.DistillConfig(" in snippet and "nets.resume(" in snippet
    prelude = (f"def tiny(make, **kw):\n"
               f"    small = dict(data_dir={mnist!r}, limit=64, batch_size=8, timesteps=50,\n"
               f"                 unet={TINY_UNET!r}, figures=False, preview=False, device='cpu',\n"
               f"                 precision='fp32') if make.__name__ == 'TrainConfig' else dict(\n"
               f"        figures=False, device='cpu', precision='fp32')\n"
               f"    if make.__name__ == 'DistillConfig' and kw.get('method') != 'consistency':\n"
               f"        small['from_steps'] = 8\n"
               f"    return make(**{{**kw, **small}})\n")
    code = re.sub(r"max_minutes=\d+", "max_minutes=0.05", snippet)
    code = code.replace("nets.TrainConfig(", "tiny(nets.TrainConfig, ").replace(
        "nets.DistillConfig(", "tiny(nets.DistillConfig, ")
    proc = subprocess.run([sys.executable, "-c", "import nets\n" + prelude + code], cwd=tmp_path,
                          env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["(16,", "28,", "28)", "4", "2"]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3 and runs[1].name == runs[0].name + "-4" and runs[2].name == runs[0].name + "-cm"
    assert len(load_checkpoint(runs[1])["distilled"]["timesteps"]) == 4
    assert load_checkpoint(runs[2])["consistency"]["calls"] == 2
