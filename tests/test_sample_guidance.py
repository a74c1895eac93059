"""Sampling without labels at sampling time: autoguidance by a worse model (Karras et al. 2024)
and a conditional model asked for labels drawn from the training set's class frequencies."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

import diffusion_core as core
from nets.checkpoint import save_checkpoint
from nets.sampling import labels_from_frequencies
from nets.sampling.guidance import AutoGuided, check_guide_matches
from nets.training.config import TrainConfig
from tests.test_sample import run_main, tiny_model


def perturbed(model, scale=0.05, seed=1):
    """A different model of the same shape: the guide."""
    torch.manual_seed(seed)
    other = type(model)(model.config)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other.eval()


def inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 20, (n,), generator=g)


def test_autoguidance_at_w_1_is_the_model_and_at_w_0_the_guide():
    main = tiny_model()
    guide = perturbed(main)
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(AutoGuided(main, guide, 1.0)(x, t), main(x, t))
        torch.testing.assert_close(AutoGuided(main, guide, 0.0)(x, t), guide(x, t))
        assert not torch.allclose(main(x, t), guide(x, t))


def test_autoguidance_extrapolates_linearly_in_w_beyond_the_model():
    main, x_t = tiny_model(), inputs()
    guide = perturbed(main)
    with torch.no_grad():
        d1, d3 = (AutoGuided(main, guide, w)(*x_t) for w in (1.0, 3.0))
        torch.testing.assert_close(d3 - d1, 2.0 * (main(*x_t) - guide(*x_t)), atol=1e-5, rtol=1e-5)


def test_autoguidance_mixes_x0_predictions_the_same_as_eps_predictions():
    # x̂0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ is affine in ε̂ with the same coefficients for both models and the
    # weights (1 − w, w) sum to 1, so mixing ε̂ then converting equals converting then mixing.
    main, (x, t) = tiny_model(), inputs()
    guide, w = perturbed(main), 2.5
    abar = torch.tensor(core.DiffusionSchedule.from_betas(core.linear_betas(20)).alphas_cumprod,
                           dtype=torch.float32)[t].reshape(-1, 1, 1, 1)

    def x0(eps):
        return (x - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)

    with torch.no_grad():
        mixed_then_converted = x0(AutoGuided(main, guide, w)(x, t))
        converted_then_mixed = x0(guide(x, t)) + w * (x0(main(x, t)) - x0(guide(x, t)))
    torch.testing.assert_close(mixed_then_converted, converted_then_mixed, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key, value", [("objective", "v"), ("schedule", "cosine"),
                                        ("timesteps", 50), ("conditional", True)])
def test_a_guide_of_another_kind_is_refused_naming_what_differs(key, value):
    main = asdict(TrainConfig(conditional=False))
    with pytest.raises(ValueError, match=f"guide model's {key}"):
        check_guide_matches(main, {**main, key: value})
    check_guide_matches(main, dict(main))


def test_a_config_without_the_objective_key_counts_as_eps():
    main = asdict(TrainConfig())
    check_guide_matches({k: v for k, v in main.items() if k != "objective"}, main)


def write(path, model, num_classes=0, objective="eps", class_counts=None):
    cfg = asdict(TrainConfig(timesteps=20, unet=model.config.to_dict(), conditional=num_classes > 0,
                             objective=objective))
    state = {"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 7,
             "config": cfg}
    if class_counts is not None:
        state["class_counts"] = class_counts
    return save_checkpoint(state, path)


def images_of(path):
    with np.load(path) as f:
        return f["images"], {k: f[k] for k in f.files}


def test_cli_guiding_a_model_by_itself_changes_nothing(tmp_path, capsys):
    main = tiny_model()
    ckpt = write(tmp_path / "m.pt", main)
    common = ["--checkpoint", ckpt, "--n", "4", "--steps", "4", "--sampler", "ddim"]
    assert run_main(*common, "--out", tmp_path / "plain.npz")[0] == 0
    code, err = run_main(*common, "--guide-model", ckpt, "--guidance", "3",
                         "--out", tmp_path / "self.npz")
    assert code == 0, err
    assert "autoguidance: w = 3" in err
    plain, _ = images_of(tmp_path / "plain.npz")
    guided, settings = images_of(tmp_path / "self.npz")
    np.testing.assert_array_equal(plain, guided)
    assert float(settings["autoguidance"]) == 3.0 and int(settings["guide_step"]) == 7


def test_cli_a_worse_guide_changes_the_images_and_w_defaults_to_2(tmp_path, capsys):
    main = tiny_model()
    ckpt, guide = write(tmp_path / "m.pt", main), write(tmp_path / "g.pt", perturbed(main, 0.2))
    common = ["--checkpoint", ckpt, "--n", "4", "--steps", "4", "--sampler", "ddim"]
    assert run_main(*common, "--out", tmp_path / "plain.npz")[0] == 0
    assert run_main(*common, "--guide-model", guide, "--out", tmp_path / "g.npz")[0] == 0
    plain, _ = images_of(tmp_path / "plain.npz")
    guided, settings = images_of(tmp_path / "g.npz")
    assert (plain != guided).mean() > 0.1
    assert float(settings["autoguidance"]) == 2.0


def test_cli_a_guide_of_another_objective_exits_2(tmp_path, capsys):
    main = tiny_model()
    ckpt, guide = write(tmp_path / "m.pt", main), write(tmp_path / "g.pt", main, objective="v")
    code, err = run_main("--checkpoint", ckpt, "--guide-model", guide, "--out",
                         tmp_path / "o.npz")
    assert code == 2 and "--guide-model" in err and "objective" in err and "Traceback" not in err


def test_labels_from_frequencies_follow_the_counts_and_the_seed():
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST test
    n = 50_000
    labels = labels_from_frequencies(n, counts, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    observed = np.bincount(labels, minlength=10)
    expected = n * np.asarray(counts) / sum(counts)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # the 0.999 quantile of χ² with 9 degrees of freedom
    np.testing.assert_array_equal(labels, labels_from_frequencies(n, counts, seed=0))
    assert (labels != labels_from_frequencies(n, counts, seed=1)).mean() > 0.8
    assert set(labels_from_frequencies(100, [0, 5, 0, 0, 0, 0, 0, 0, 0, 5], 0)) <= {1, 9}


def test_cli_digit_frequencies_draws_the_checkpoints_class_counts(tmp_path, capsys):
    model = tiny_model(10)
    counts = [0, 0, 0, 7, 0, 0, 0, 0, 0, 3]
    ckpt = write(tmp_path / "c.pt", model, 10, class_counts=counts)
    code, err = run_main("--checkpoint", ckpt, "--n", "20", "--steps", "3", "--digit",
                         "frequencies", "--guidance", "2", "--seed", "5", "--out", tmp_path / "f.npz")
    assert code == 0, err
    _, settings = images_of(tmp_path / "f.npz")
    np.testing.assert_array_equal(settings["labels"], labels_from_frequencies(20, counts, 5))
    assert str(settings["digit"]) == "frequencies" and float(settings["guidance"]) == 2.0


def test_cli_digit_frequencies_without_recorded_counts_exits_2(tmp_path, capsys):
    ckpt = write(tmp_path / "old.pt", tiny_model(10), 10)
    code, err = run_main("--checkpoint", ckpt, "--digit", "frequencies", "--out",
                         tmp_path / "o.npz")
    assert code == 2 and "class counts" in err and "--class all" in err


def test_a_checkpoint_with_garbled_class_counts_exits_2(tmp_path, capsys):
    ckpt = write(tmp_path / "bad.pt", tiny_model(10), 10, class_counts=[1, 2, 3])
    code, err = run_main("--checkpoint", ckpt, "--out", tmp_path / "o.npz")
    assert code == 2 and "class_counts" in err and "Traceback" not in err


def test_cli_a_conditional_checkpoint_with_counts_samples_the_frequencies_by_default(tmp_path, capsys):
    counts = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    ckpt = write(tmp_path / "c.pt", tiny_model(10), 10, class_counts=counts)
    code, err = run_main("--checkpoint", ckpt, "--n", "12", "--steps", "3", "--out",
                         tmp_path / "d.npz")
    assert code == 0, err
    _, settings = images_of(tmp_path / "d.npz")
    assert str(settings["digit"]) == "frequencies" and set(settings["labels"]) <= {0, 9}
    np.testing.assert_array_equal(settings["labels"], labels_from_frequencies(12, counts, 0))
