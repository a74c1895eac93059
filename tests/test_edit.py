"""python -m nets.edit: inversion, interpolation and inpainting, and the one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_sample import GaussianEpsOracle, checkpoints  # noqa: F401 (fixture)

import diffusion_core as core
from nets import edit
from nets.diffusion import Diffusion
from nets.editing.inversion import decode, invert
from nets.editing.masks import named_mask
from nets.pixels import to_training_tensor
from nets.sampling import Network


def run_edit(capsys, mnist, *argv):
    try:
        code = edit.main([*map(str, argv), "--data-dir", mnist, "--device", "cpu", "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_inversion_through_the_torch_loop_round_trips_gaussian_data_better_with_more_steps():
    """The exact denoiser of N(0.3, 0.2²) pixels as the model: the round trip's error falls with K."""
    schedule = core.DiffusionSchedule.from_betas(core.linear_betas(1000))
    model, diffusion = GaussianEpsOracle(schedule), Diffusion(schedule)
    x0 = torch.from_numpy(np.random.default_rng(0).normal(0.3, 0.2, (8, 1, 2, 2)))
    errors = []
    for K in (10, 40, 160):
        with torch.inference_mode():
            net = Network(model, diffusion)
            back = decode(net, invert(net, x0, K), K)
        errors.append(float((back - x0).abs().max()))
    # measured 0.35, 0.13, 0.036: about first order in K, as the core's own round trip
    assert errors[0] > errors[1] > errors[2] and np.log(errors[0] / errors[2]) / np.log(16) > 0.7, errors


def test_invert_writes_originals_latents_reconstructions_and_prints_the_error(checkpoints, tmp_path,  # noqa: F811
                                                                             capsys, mnist):
    out = tmp_path / "inv.npz"
    code, err = run_edit(capsys, mnist, "invert", "--checkpoint", checkpoints["uncond"], "--index", "0-2,7",
                         "--steps", "8", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        assert f["images"].shape == (4, 28, 28) and f["images"].dtype == np.uint8
        assert f["latents"].shape == (4, 28, 28) and f["latents"].dtype == np.float32
        assert f["reconstructions"].shape == (4, 28, 28) and f["reconstructions"].dtype == np.uint8
        np.testing.assert_array_equal(f["index"], [0, 1, 2, 7])
        errors = f["round_trip_error"]
    assert "image 7: round-trip RMS error" in err and f"mean RMS error {errors.mean():.4f}" in err
    assert Image.open(out.with_suffix(".png")).size[0] > 100


@pytest.mark.parametrize("mask", ["left", "top", "center", "random"])
def test_inpaint_returns_the_known_pixels_exactly_as_given(checkpoints, tmp_path, capsys, mnist, mask):  # noqa: F811
    out = tmp_path / "inp.npz"
    code, err = run_edit(capsys, mnist, "inpaint", "--checkpoint", checkpoints["uncond"], "--index", "4",
                         "--mask", mask, "--n", "3", "--steps", "6", "--resample", "2", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        images, original, known = f["images"], f["original"], f["known"]
    np.testing.assert_array_equal(known, named_mask(mask, 0))
    assert images.shape == (3, 28, 28) and known.dtype == bool
    assert np.array_equal(images[:, known], np.broadcast_to(original[known], (3, int(known.sum()))))
    assert not np.array_equal(images[0][~known], images[1][~known])  # completions differ


def test_inpaint_takes_a_black_and_white_mask_file(checkpoints, tmp_path, capsys, mnist):  # noqa: F811
    known = np.zeros((28, 28), bool)
    known[::2] = True
    Image.fromarray(known.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = tmp_path / "inp.npz"
    code, err = run_edit(capsys, mnist, "inpaint", "--checkpoint", checkpoints["uncond"], "--mask-file",
                         tmp_path / "m.png", "--n", "2", "--steps", "4", "--resample", "1", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        np.testing.assert_array_equal(f["known"], known)


def test_interpolate_decodes_the_slerp_path_between_two_seeds(checkpoints, tmp_path, capsys, mnist):  # noqa: F811
    out = tmp_path / "path.npz"
    code, err = run_edit(capsys, mnist, "interpolate", "--checkpoint", checkpoints["uncond"],
                         "--seeds", "1,2", "--frames", "5", "--steps", "6", "--out", out)
    assert code == 0, err
    with np.load(out) as f:
        frames, latents = f["images"], f["latents"]
    assert frames.shape == (5, 28, 28) and latents.shape == (5, 28, 28)
    first = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(latents[0], first[0, 0].numpy(), atol=1e-6)  # the path starts at seed 1
    norms = np.linalg.norm(latents.reshape(5, -1), axis=1) / 28
    assert np.all(np.abs(norms - 1) < 0.1)  # slerp stays near the Gaussian shell


def test_interpolate_between_two_real_digits_runs(checkpoints, tmp_path, capsys, mnist):  # noqa: F811
    code, err = run_edit(capsys, mnist, "interpolate", "--checkpoint", checkpoints["cond"], "--index", "3,7",
                         "--frames", "3", "--steps", "4", "--digit", "8", "--guidance", "2",
                         "--out", tmp_path / "p.npz")
    assert code == 0, err


@pytest.mark.parametrize(("args", "message"), [
    (["invert", "--index", "10000"], "--index: 10000 is out of range"),
    (["invert", "--index", "a-b"], "expected indices like 0-15,42"),
    (["interpolate", "--seeds", "1,2", "--frames", "1"], "--frames"),
    (["interpolate", "--seeds", "1,2", "--index", "3,7"], "exactly one of"),
    (["interpolate", "--index", "3,7,9"], "two digits"),
    (["inpaint", "--mask", "diagonal"], "invalid choice: 'diagonal'"),
    (["inpaint", "--mask-file", "GREY"], "not black and white"),
    (["inpaint", "--mask-file", "SMALL"], "not the model's 28×28"),
    (["inpaint", "--index", "1,2"], "completes one image"),
    (["invert", "--digit", "3"], "unconditional"),
    (["invert", "--out", "x.png"], "must end in .npz"),
])
def test_bad_input_exits_2_with_one_line_naming_the_problem(checkpoints, tmp_path, capsys, mnist,  # noqa: F811
                                                           args, message):
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(tmp_path / "small.png")
    args = [str(tmp_path / "grey.png") if a == "GREY" else str(tmp_path / "small.png") if a == "SMALL" else a
            for a in args]
    code, err = run_edit(capsys, mnist, *args[:1], "--checkpoint", checkpoints["uncond"], "--steps", "3",
                         "--out", tmp_path / "o.npz", *args[1:])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_named_masks_keep_the_halves_they_name():
    assert named_mask("left")[:, :14].all() and not named_mask("left")[:, 14:].any()
    assert named_mask("bottom")[14:].all() and not named_mask("bottom")[:14].any()
    assert named_mask("center").sum() == 28 * 28 - 14 * 14
    assert 0.4 < named_mask("random", 3).mean() < 0.6
    with pytest.raises(ValueError, match="unknown mask"):
        named_mask("diagonal")


def test_to_training_tensor_and_back_keeps_uint8_digits():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    from nets.pixels import images_to_uint8
    np.testing.assert_array_equal(images_to_uint8(to_training_tensor(images)), images)
