"""Shared test set-up: deterministic Hypothesis profiles, the real MNIST digits (one fixture), one
tiny training configuration, one runner of commands in a child process and one in this process,
and one tiny U-Net. Test modules import the helpers: ``from conftest import tiny_flags, ...``."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# One thread everywhere, children included: on a loaded 2-core machine two spinning OpenMP threads
# run the tests' tiny convolutions 10-30x slower, and two child processes would oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Deterministic by default so a failure reproduces; `ci` trades examples for time on 2 cores.
settings.register_profile(
    "dev", derandomize=True, max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def mnist_dir() -> Path | None:
    """The real MNIST test split: $DDPM_MNIST_DIR, else ../shared/data/mnist beside the checkout."""
    path = Path(os.environ.get("DDPM_MNIST_DIR", _DEFAULT_MNIST))
    return path if (path / "t10k-images-idx3-ubyte.gz").exists() or (
        path / "t10k-images-idx3-ubyte").exists() else None


@pytest.fixture(scope="session")
def mnist() -> str:
    """The real MNIST test split's folder (as a string, for argv lists); skips without it."""
    path = mnist_dir()
    if path is None:
        pytest.skip("real MNIST test split not found: set DDPM_MNIST_DIR to a folder holding "
                    "t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)")
    return str(path)


@pytest.fixture
def real_mnist_dir(mnist) -> Path:
    """``mnist`` as a Path."""
    return Path(mnist)


# ---- one tiny configuration, and the runners of the commands ------------------------------------

TINY_MODEL = ["--base-channels", "8", "--channel-mults", "1,2", "--timesteps", "50"]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_flags(limit: int = 64, batch_size: int | None = 8, figures: bool = False) -> list[str]:
    """``nets.train`` flags of a run that takes seconds: the first ``limit`` test digits, an
    8-wide two-level U-Net over T = 50 (no figures unless asked)."""
    flags = ["--split", "test", "--limit", str(limit), *TINY_MODEL]
    if batch_size is not None:
        flags += ["--batch-size", str(batch_size)]
    return flags if figures else [*flags, "--no-figures"]


def run_command(module: str, *argv, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m <module> argv...`` in a child process (one OpenMP thread, unbuffered)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=CHILD_ENV, **kwargs)


def run_in_process(main, *argv) -> tuple[int, str]:
    """A command's ``main(argv)`` in this process: (exit code, stderr); stdout is dropped."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def tiny_unet(conditional: bool = False, seed: int = 0):
    """A seeded 8-wide two-level U-Net without attention, frozen for inference."""
    from nets.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
                            num_classes=10 if conditional else 0))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def weak_classifier(tmp_path_factory, mnist):
    """An evaluation classifier of one epoch on 2,000 real digits: enough to run an evaluation end
    to end in seconds, not to trust its numbers."""
    from nets.data import load_mnist
    from nets.evaluation import classifier as clf

    data = load_mnist(mnist, "test")
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    clf.train_and_save(data.images[:2000], data.labels[:2000], path,
                       clf.ClassifierTraining(epochs=1, min_accuracy=0.0), source="test[:2000]")
    return path
