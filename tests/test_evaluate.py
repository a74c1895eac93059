"""Evaluation: the Fréchet distance against closed forms, the classifier on real digits, the NLL
against an oracle denoiser, bad inputs, and train → sample → evaluate end to end."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffusion_core as core
from nets import evaluate
from nets.diffusion import Diffusion, as_table
from nets.evaluation import classifier as clf
from nets.evaluation import metrics, protocol
from nets.evaluation.nll import nll_bits_per_dim

# ---------------------------------------------------------------------------------------------
# Fréchet distance


def random_rotation(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def fd_reference(mu1, s1, mu2, s2):
    """tr(Σ1 + Σ2 − 2(Σ1^½ Σ2 Σ1^½)^½) via symmetric eigendecompositions (not sqrtm(Σ1Σ2))."""
    def psd_sqrt(a):
        w, v = np.linalg.eigh(a)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    r1 = psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(psd_sqrt(r1 @ s2 @ r1)))


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = np.random.default_rng(0).standard_normal((500, 16))
    a = metrics.gaussian_statistics(x)
    assert metrics.frechet_distance_of(a, a) < 1e-8
    shifts = [metrics.frechet_distance_of(a, metrics.gaussian_statistics(x + d))
              for d in (0.1, 0.5, 1.0)]
    # equal covariances: d² = ‖δ‖² = 16·d² exactly
    np.testing.assert_allclose(shifts, [16 * 0.01, 16 * 0.25, 16 * 1.0], rtol=1e-6)


def test_frechet_distance_of_commuting_covariances_is_the_closed_form():
    rng = np.random.default_rng(1)
    q = random_rotation(8, rng)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    got = metrics.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert got == pytest.approx(expected, rel=1e-9)


@given(st.integers(0, 10_000), st.integers(1, 12))
def test_frechet_distance_matches_the_symmetric_form_for_any_two_covariances(seed, d):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.standard_normal((2, d, d))
    s1, s2 = m1 @ m1.T + 1e-3 * np.eye(d), m2 @ m2.T + 1e-3 * np.eye(d)
    mu1, mu2 = rng.standard_normal((2, d))
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(fd_reference(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)
    assert got == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-6, abs=1e-8)


def test_frechet_distance_of_samples_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(2)
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.array([[1.0, 0.5, 0], [0.5, 1.0, 0], [0, 0, 2.0]])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0, 0])
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    got = metrics.frechet_distance_of(metrics.gaussian_statistics(x), metrics.gaussian_statistics(y))
    assert got == pytest.approx(fd_reference(mu1, s1, mu2, s2), abs=0.02)


def test_frechet_distance_of_rank_deficient_covariances_is_finite():
    rng = np.random.default_rng(3)  # 20 samples in 64 dimensions: singular covariances
    a = metrics.gaussian_statistics(rng.standard_normal((20, 64)))
    b = metrics.gaussian_statistics(rng.standard_normal((20, 64)) + 1)
    value = metrics.frechet_distance_of(a, b)
    assert math.isfinite(value) and value > 64 * 0.9


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------
# Class statistics and nearest neighbours


def test_class_statistics_example_and_entropy_bounds():
    probs = np.array([[0.95, 0.05], [0.2, 0.8], [0.01, 0.99], [0.5, 0.5]])
    s = metrics.class_statistics(probs, 0.9)
    assert s.confident_fraction == 0.5 and s.histogram == [2, 2]
    assert s.mean_confidence == pytest.approx((0.95 + 0.8 + 0.99 + 0.5) / 4)
    assert s.entropy == pytest.approx(math.log(2))
    assert metrics.histogram_entropy(np.full(10, 7)) == pytest.approx(metrics.MAX_ENTROPY_10)
    assert metrics.histogram_entropy(np.eye(10)[3]) == 0.0


def test_nearest_neighbour_distances_match_a_loop():
    rng = np.random.default_rng(4)
    q = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    r = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    loop = [min(np.linalg.norm((a / 255.0) - (b / 255.0)) for b in r) for a in q]
    np.testing.assert_allclose(metrics.nearest_neighbour_distances(q, r, chunk=3), loop,
                               rtol=1e-5)
    loo = [min(np.linalg.norm((r[i] - r[j].astype(float)) / 255) for j in range(30) if j != i)
           for i in range(30)]
    np.testing.assert_allclose(metrics.nearest_neighbour_distances(r, r, exclude_self=True,
                                                                   chunk=8), loo, rtol=1e-5)
    assert metrics.nearest_neighbour_distances(r[:3], r).max() < 0.05  # copies: ~0


@pytest.mark.parametrize("n", [50, protocol.BASELINE_IMAGES + 30])
def test_memorisation_baseline_without_held_out_images_is_leave_one_out(n):
    train = np.random.default_rng(6).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ref = protocol.make_reference(train, train[:0], seed=0)
    loo = metrics.nearest_neighbour_distances(train, train, exclude_self=True)
    assert ref.baseline_kind == "leave-one-out"
    assert len(ref.baseline_nn) == min(n, protocol.BASELINE_IMAGES)
    # Each baseline distance is some image's leave-one-out distance, to float32 round-off (the
    # chunked ‖q‖² + ‖r‖² − 2q·r differs in its last bits between query subsets).
    nearest = np.abs(ref.baseline_nn[:, None] - loo[None, :]).min(axis=1)
    assert nearest.max() < 1e-5 * loo.max()


# ---------------------------------------------------------------------------------------------
# The classifier on real digits


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """The test version: 6000 images, 4800 trained on, 1200 held out (the CLI uses all 10000)."""
    from conftest import mnist_dir

    from nets.data import load_mnist

    if mnist_dir() is None:
        pytest.skip("real MNIST test split not found: set DDPM_MNIST_DIR (see tests/conftest.py)")
    data = load_mnist(mnist_dir(), "test")
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    info = clf.train_and_save(data.images[:6000], data.labels[:6000], path,
                              clf.ClassifierTraining(holdout=0.2, epochs=8, seed=0, min_accuracy=0.0),
                              source="test[:6000]")
    return path, info


def test_classifier_reaches_97_percent_on_held_out_real_digits(trained_classifier):
    path, info = trained_classifier
    assert info["held_out_images"] == 1200 and info["train_images"] == 4800
    assert info["held_out_accuracy"] >= 0.97
    model, saved = clf.load_classifier(path)
    assert saved["held_out_accuracy"] == info["held_out_accuracy"]
    raw = torch.load(path, weights_only=True)  # a plain safe-load file
    assert raw["kind"] == clf.KIND


def test_classifier_file_of_another_kind_is_refused(tmp_path):
    from nets.checkpoint import save_checkpoint

    path = save_checkpoint({"model": {}, "config": {}}, tmp_path / "x.pt")
    with pytest.raises(clf.ClassifierError, match="not a classifier file"):
        clf.load_classifier(path)


# ---------------------------------------------------------------------------------------------
# NLL via the variational bound


class OracleDenoiser(torch.nn.Module):
    """Knows the batch's x0, so predicts ε exactly: every KL term vanishes, L = L_T + L_0."""

    def __init__(self, schedule, x0):
        super().__init__()
        self.abar = as_table(schedule.alphas_cumprod)
        self.x0 = x0

    def forward(self, x, t):
        a = self.abar[t].reshape(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * self.x0.double()) / (1 - a).sqrt()).float()


def test_nll_of_an_oracle_denoiser_is_the_prior_plus_the_decoder_term():
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(20))
    images = np.random.default_rng(5).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    images[:, :4] = 0  # some pixels in each edge bin
    images[:, -4:] = 255
    x0 = torch.from_numpy(images).double().unsqueeze(1) / 127.5 - 1
    nll = nll_bits_per_dim(OracleDenoiser(schedule, x0), Diffusion(schedule), images,
                                    batch_size=3)
    # independent closed forms: KL(N(√ᾱ_T x0, 1-ᾱ_T) ‖ N(0, 1)) and the exact Φ bin mass
    a_T = schedule.alphas_cumprod[-1]
    x = x0.numpy()
    prior = 0.5 * (-1 - np.log(1 - a_T) + (1 - a_T) + a_T * x**2)
    sigma = math.exp(0.5 * schedule.posterior_log_variance_clipped[0])
    h = 1 / 255 / sigma
    bin_mass = np.where(np.abs(x) > 0.999, scipy.special.ndtr(h), scipy.special.ndtr(h)
                        - scipy.special.ndtr(-h))
    dims = 784 * math.log(2)
    assert nll.prior_bpd == pytest.approx(prior.sum() / 3 / dims, rel=1e-6)
    assert nll.diffusion_bpd == pytest.approx(0.0, abs=1e-6)
    assert nll.decoder_bpd == pytest.approx(-np.log(bin_mass).sum() / 3 / dims, rel=2e-3)
    assert nll.bits_per_dim == pytest.approx(nll.prior_bpd + nll.decoder_bpd, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# python -m nets.evaluate: bad inputs (in process) and the round trip (subprocesses)


def run_main(capsys, *argv):
    try:
        code = evaluate.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr()


def bad_npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: bad_npz(p, "a.npz", pictures=np.zeros((4, 28, 28), np.uint8)), "no 'images'"),
    (lambda p: bad_npz(p, "b.npz", images=np.zeros((4, 28, 28), np.float32)), "must be uint8"),
    (lambda p: bad_npz(p, "c.npz", images=np.zeros((4, 32, 32), np.uint8)), "shape (N, 28, 28)"),
    (lambda p: bad_npz(p, "d.npz", images=np.zeros((1, 28, 28), np.uint8)), "at least 2"),
    (lambda p: (p / "e.npz").write_bytes(b"") and None or p / "e.npz", "is empty"),
    (lambda p: (p / "f.npz").write_text("hello") and None or p / "f.npz", "not a readable"),
    (lambda p: p / "missing.npz", "no such file"),
])
def test_bad_samples_exit_2(tmp_path, capsys, make, message):
    code, out = run_main(capsys, "--samples", make(tmp_path))
    assert code == 2 and message in out.err and "Traceback" not in out.err


def test_a_checkpoint_of_another_model_exits_2(tmp_path, capsys, trained_classifier):
    samples = bad_npz(tmp_path, "s.npz", images=np.zeros((4, 28, 28), np.uint8))
    code, out = run_main(capsys, "--samples", samples, "--checkpoint", trained_classifier[0])
    assert code == 2 and "not a DDPM checkpoint" in out.err


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --samples"),
    (["--calibrate", "--samples", "x.npz"], "give exactly one of --samples"),
    (["--samples", "x.npz", "--nll-images", "4"], "needs --checkpoint"),
])
def test_bad_flag_combinations_exit_2(capsys, args, message):
    code, out = run_main(capsys, *args)
    assert code == 2 and message in out.err


def test_missing_classifier_without_training_exits_2_with_the_command(tmp_path, capsys,
                                                                      real_mnist_dir):
    samples = bad_npz(tmp_path, "s.npz", images=np.zeros((4, 28, 28), np.uint8))
    code, out = run_main(capsys, "--samples", samples, "--data-dir", real_mnist_dir,
                         "--classifier", tmp_path / "none.pt", "--no-train-classifier")
    assert code == 2 and "python -m nets.train_classifier" in out.err


def test_real_digits_as_samples_score_like_the_real_floor(tmp_path, capsys, trained_classifier):
    from conftest import mnist_dir

    from nets.data import load_mnist

    data = load_mnist(mnist_dir(), "test")
    pick = 5000 + np.random.default_rng(0).choice(5000, 500, replace=False)  # never "trained on"
    samples = bad_npz(tmp_path, "real.npz", images=data.images[pick],
                      labels=data.labels[pick].astype(np.int64))
    code, out = run_main(capsys, "--samples", samples, "--data-dir", mnist_dir(),
                         "--classifier", trained_classifier[0], "--train-images", "5000",
                         "--json", tmp_path / "r.json")
    assert code == 0, out.err
    report = json.loads((tmp_path / "r.json").read_text())
    m, floor = report["metrics"], report["real_floor"]
    assert floor["count"] == 500 and report["memorisation"]["baseline"] == "held-out"
    # The file is ordered by writer, so half of it is not quite the whole: FD ~2x the floor
    # (noise and blur score 20x to 300x; docs/evaluation.md).
    assert m["frechet_distance"] < 4 * floor["frechet_distance"]
    assert 0.8 < m["memorisation_ratio"] < 1.25
    assert m["label_agreement"] >= 0.95 and "requested class" in out.out
    per_digit = m["label_agreement_per_digit"]
    assert len(per_digit) == 10 and min(per_digit) >= 0.85 and "requested class 7" in out.out
    counts = np.bincount(data.labels[pick], minlength=10)  # the overall share is their weighted mean
    assert np.isclose(np.dot(per_digit, counts) / counts.sum(), m["label_agreement"])


def test_bad_labels_exit_2(tmp_path, capsys):
    samples = bad_npz(tmp_path, "l.npz", images=np.zeros((4, 28, 28), np.uint8),
                      labels=np.array([0, 1, 2, 12]))
    code, out = run_main(capsys, "--samples", samples)
    assert code == 2 and "'labels' must be integers 0-9" in out.err


@pytest.mark.slow
def test_cli_train_sample_evaluate_round_trip(tmp_path, real_mnist_dir, trained_classifier):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run_dir = tmp_path / "run"
    run("nets.train", "--data-dir", real_mnist_dir, "--split", "test", "--limit", "300",
        "--batch-size", "32", "--max-steps", "30", "--base-channels", "8",
        "--channel-mults", "1,2", "--timesteps", "50", "--no-figures", "--run-dir", run_dir)
    samples = tmp_path / "samples.npz"
    proc = run("nets.sample", "--checkpoint", run_dir, "--n", "24", "--batch-size", "12",
               "--out", samples, "--device", "cpu")
    assert "images/s" in proc.stderr
    report_path = tmp_path / "eval.json"
    proc = run("nets.evaluate", "--samples", samples, "--data-dir", real_mnist_dir,
               "--split", "test", "--classifier", trained_classifier[0], "--checkpoint", run_dir,
               "--nll-images", "4", "--json", report_path)
    assert "Fréchet distance" in proc.stdout and "images/s" in proc.stdout
    report = json.loads(report_path.read_text())
    m = report["metrics"]
    assert m["count"] == 24 and sum(m["class_histogram"]) == 24
    assert math.isfinite(m["frechet_distance"]) and m["frechet_distance"] > 0
    assert 0 <= m["class_entropy"] <= math.log(10) + 1e-9
    assert report["memorisation"]["training_count"] == 300
    assert report["memorisation"]["baseline"] == "held-out"
    assert report["real"]["count"] == 9700 and "never trained on" in report["real"]["reference"]
    assert m["nn_median"] > 0 and m["memorisation_ratio"] > 0
    nll = report["nll"]
    assert nll["images"] == 4 and nll["which"] == "held-out" and nll["timesteps"] == 50
    assert 0 < nll["bits_per_dim"] < 16
    assert report["samples"]["sampler"] == "sde-dpmpp-2m" and report["samples"]["images_per_second"] > 0


def test_a_text_file_as_classifier_is_a_classifier_error(tmp_path):
    from nets.evaluation.classifier import ClassifierError, load_classifier

    path = tmp_path / "classifier.pt"
    path.write_text("not a torch file\n" * 20)
    with pytest.raises(ClassifierError, match=r"classifier \S+\.pt (is not readable|holds objects)"):
        load_classifier(path)


@pytest.mark.parametrize(("cfg", "train_rows", "held_rows"), [
    ({"split": "test"}, (0, 100), (100, 100)),
    ({"split": "test", "limit": 30}, (0, 30), (30, 100)),
    ({"split": "test", "holdout": 20}, (0, 80), (80, 100)),
    ({"split": "test", "limit": 30, "holdout": 20}, (0, 30), (80, 100)),
    ({"split": "test", "limit": 95, "holdout": 20}, (0, 80), (80, 100)),
])
def test_the_checkpoints_held_out_images_are_exactly_those_it_never_trained_on(cfg, train_rows, held_rows):
    real = np.arange(100)
    train, held, _ = protocol.training_images_of(real, "test", None, cfg, None)
    np.testing.assert_array_equal(train, real[slice(*train_rows)])
    np.testing.assert_array_equal(held, real[slice(*held_rows)])
    assert not set(train) & set(held)
