"""Shared test set-up: deterministic Hypothesis profiles and the location of the real MNIST digits."""

import os
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


@pytest.fixture
def real_mnist_dir() -> Path:
    path = mnist_dir()
    if path is None:
        pytest.skip("real MNIST test split not found: set DDPM_MNIST_DIR to a folder holding "
                    "t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)")
    return path


@pytest.fixture(scope="session")
def mnist() -> str:
    """``real_mnist_dir`` as a string, for module- and session-scoped fixtures."""
    path = mnist_dir()
    if path is None:
        pytest.skip("real MNIST test split not found: set DDPM_MNIST_DIR")
    return str(path)


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
