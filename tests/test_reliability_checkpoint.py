"""Issue #6, item 5: a checkpoint from a stranger never runs code; a wrong or damaged one is a
clear one-line error (exit 2 from the CLIs), never a traceback.

The malicious checkpoint is real: its pickle holds an object whose ``__reduce__`` opens a marker
file for writing, and a control test shows that an unsafe ``torch.load`` really creates it.
"""

import importlib.util

import pytest
import torch
from conftest import mnist_dir, run_command, tiny_flags
from test_reliability import train_in_process

from nets.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from nets.unet import UNet, UNetConfig

TINY = tiny_flags()


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: code a checkpoint must never get to run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker, fmt: str) -> None:
    state = {"model": {"w": CreatesMarker(marker)}, "config": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch's zip format (the default since 1.6) or its legacy format, which torch.load still reads
    torch.save(state, path, _use_new_zipfile_serialization=fmt == "torch-zip")




@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A real 2-step run directory (checkpoint.pt, metrics.jsonl, config.json)."""
    data = mnist_dir()
    if data is None:
        pytest.skip("real MNIST test split not found: set DDPM_MNIST_DIR")
    run_dir = tmp_path_factory.mktemp("good") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, stderr = train_in_process(*TINY, "--data-dir", data, "--max-steps", 2,
                                      "--run-dir", run_dir)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stderr
    return run_dir


# ---------------------------------------------------------------------------------------------
# A pickle that would run code


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy"])
def test_control_an_unsafe_load_of_the_malicious_file_does_run_its_code(tmp_path, fmt):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "evil.pt", marker, fmt)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what load_checkpoint must never do
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy"])
def test_load_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path, fmt):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "evil.pt", marker, fmt)
    with pytest.raises(CheckpointError, match="safe load refuses") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_train_resume_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "run" / "checkpoint.pt", marker, "torch-zip")
    proc = run_command("nets.train", "--resume", tmp_path / "run")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --resume: ") and "safe load refuses" in line
    assert not marker.exists()


def test_train_resume_in_process_refuses_a_legacy_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "run" / "checkpoint.pt", marker, "torch-legacy")
    code, stderr = train_in_process("--resume", tmp_path / "run")
    assert code == 2 and "safe load refuses" in stderr and len(stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nets.sample") is None,
                    reason="nets/sample.py is not written yet")
def test_sample_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "evil.pt", marker, "torch-zip")
    proc = run_command("nets.sample", "--checkpoint", tmp_path / "evil.pt", "--n", 1,
                      "--out", tmp_path / "out.npz")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "--checkpoint" in line and "safe load refuses" in line
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------------
# Wrong architecture, incomplete or damaged checkpoints


def rewrite(run_dir, tmp_path, change) -> str:
    """A copy of ``run_dir``'s checkpoint, changed by ``change(state)``, in a new run dir."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(state)
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(state, bad / "checkpoint.pt")
    return bad


def widen(state):
    state["config"]["unet"]["base_channels"] = 16


def deepen(state):
    state["config"]["unet"]["channel_mults"] = [1, 2, 2]


@pytest.mark.parametrize(("change", "expected"), [
    (widen, "shape mismatch (checkpoint vs model): time_mlp.0.weight (32, 8) vs (64, 16)"),
    (deepen, "missing: down.3."),
    (lambda s: s.pop("optimizer"), "not a complete training checkpoint: KeyError: 'optimizer'"),
    (lambda s: s.pop("rng"), "not a complete training checkpoint: KeyError: 'rng'"),
    (lambda s: s["optimizer"].update(param_groups=[]), "different number of parameter groups"),
    (lambda s: s.update(step="ten"), "ValueError: invalid literal for int()"),
    (lambda s: s.update(model=[1.0]), "the model weights in"),
    (lambda s: s["config"].update(learning_rate=1), "unknown config fields learning_rate"),
    (lambda s: s["config"]["unet"].update(base_channels=3), "not divisible by num_groups"),
    (lambda s: s["config"].update(schedule="quadratic"),
     "schedule: must be one of linear, cosine, sigmoid; got 'quadratic'"),
    (lambda s: s["config"].update(batch_size=0), "batch_size: must be >= 1, got 0"),
    (lambda s: s["config"].update(lr="fast"), "lr: expected a finite number, got 'fast'"),
], ids=["wider-unet", "deeper-unet", "no-optimizer", "no-rng", "optimizer-of-another-model",
        "step-not-a-number", "weights-not-a-dict", "unknown-config-key", "invalid-unet-config",
        "unknown-schedule", "batch-size-0", "lr-not-a-number"])
def test_resume_of_a_checkpoint_that_does_not_fit_exits_2_naming_the_mismatch(
        good_run, tmp_path, change, expected):
    bad = rewrite(good_run, tmp_path, change)
    code, stderr = train_in_process("--resume", bad)
    assert code == 2 and "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "error" in line]
    assert line == stderr.strip().splitlines()[-1]  # after "data: ..." and "model: ..." lines
    assert line.startswith("error: --resume: ") and expected in line, line


DAMAGE = {
    "empty": lambda b: b"",
    "cut in half": lambda b: b[: len(b) // 2],
    "bytes flipped": lambda b: b[:4096] + bytes(x ^ 0xFF for x in b[4096:4352]) + b[4352:],
    "zeros": lambda b: bytes(len(b)),
    "text": lambda b: b"hello, I am not a checkpoint\n",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_a_one_line_error_from_load_and_resume(good_run, tmp_path, damage):
    (tmp_path / "bad").mkdir()
    path = tmp_path / "bad" / "checkpoint.pt"
    path.write_bytes(DAMAGE[damage]((good_run / "checkpoint.pt").read_bytes()))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    code, stderr = train_in_process("--resume", path.parent)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr


def test_load_weights_names_mismatched_shapes_missing_and_unexpected_keys():
    small = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2)))
    other = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2, 2))).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_weights(small, other, "weights in x.pt")
    message = str(info.value)
    assert message.startswith("the weights in x.pt do not fit")
    assert "shape mismatch" in message and "unexpected: down.3." in message
    assert "and " in message and "more" in message  # long lists are cut, not dumped
    load_weights(small, small.state_dict())  # a fitting state loads


# ---------------------------------------------------------------------------------------------
# Never write NaN weights


@pytest.mark.parametrize("key", ["model", "ema"])
def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path, key):
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2)))
    state = {"model": model.state_dict(), "ema": model.state_dict(), "config": {}, "step": 1}
    path = save_checkpoint(state, tmp_path / "checkpoint.pt")
    good = path.read_bytes()
    poisoned = {name: t.clone() for name, t in model.state_dict().items()}
    poisoned["out.2.weight"].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=rf"non-finite values in the {key} weights \(out.2.weight\)"):
        save_checkpoint({**state, key: poisoned, "step": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
