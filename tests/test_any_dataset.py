"""The model follows the data: a tiny colour run from a folder of class subfolders through
train → sample → evaluate → edit → distill, the U-Net presets by size, checkpoints that record
their dataset (old ones load as MNIST), and bad data refused with one line (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_command
from PIL import Image

import nets
from nets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nets.data import MNIST_INFO
from nets.unet import preset_levels, unet_for_data

COLOURS = {"blue": (40, 60, 255), "green": (40, 230, 60), "red": (255, 50, 40)}
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": []}


def tiny_config(dataset: str, run_dir: Path, **changes) -> nets.TrainConfig:
    values = {"dataset": dataset, "unet": TINY_UNET, "timesteps": 50, "max_steps": 6, "batch_size": 8,
              "warmup_steps": 2, "figures": False, "preview": False, "run_dir": str(run_dir),
              "precision": "fp32", **changes}
    return nets.TrainConfig(**values)


def blob_folder(root: Path, per_class: int = 100, size: int = 32) -> Path:
    """Class subfolders of PNGs: a random bright blob on black, tinted by its class."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cy, cx, r = rng.uniform(size * 0.3, size * 0.7, 2).tolist() + [rng.uniform(4, 9)]
            blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None] * np.asarray(colour)
            Image.fromarray(blob.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, cache) -> tuple[Path, Path]:
    """(the folder, a 6-step run trained on it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cache))
    root = blob_folder(tmp_path_factory.mktemp("data") / "blobs")
    run = nets.fit(tiny_config(str(root), tmp_path_factory.mktemp("runs") / "colour", holdout=60))
    mp.undo()
    return root, run.run_dir


@pytest.fixture
def child_env(cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    import conftest
    monkeypatch.setattr(conftest, "CHILD_ENV", {**conftest.CHILD_ENV, "XDG_CACHE_HOME": str(cache)})


def test_the_checkpoint_records_the_dataset_and_the_model_fits_it(colour_run):
    root, run = colour_run
    state = load_checkpoint(run)
    assert state["dataset"]["class_names"] == ["blue", "green", "red"]
    assert state["dataset"]["shape"] == [3, 32, 32] and state["config"]["dataset"] == str(root)
    unet = state["config"]["unet"]
    assert (unet["in_channels"], unet["image_size"], unet["num_classes"]) == (3, 32, 3)
    assert sum(state["class_counts"]) == 240  # 300 images less the 60 held out


def test_a_colour_model_samples_by_class_name_and_scores_against_its_own_data(colour_run, child_env):
    _, run = colour_run
    pipe = nets.load(run, precision="fp32")
    red = pipe.sample(6, label="red", sampler=nets.SamplerSettings("ddim", steps=5))
    assert red.images.shape == (6, 32, 32, 3) and red.images.dtype == np.uint8
    assert set(red.labels.tolist()) == {2} and red.settings["class_names"] == ["blue", "green", "red"]
    old_style = pipe.sample(3, digit=1, sampler=nets.SamplerSettings("ddim", steps=5))
    assert set(old_style.labels.tolist()) == {1}
    report = pipe.evaluate(pipe.sample(20, sampler=nets.SamplerSettings("ddim", steps=5)))
    assert report.real["dataset"] == str(colour_run[0])
    assert "the 60 images of the folder" in report.real["reference"]  # exactly the held-out rows
    assert len(report["metrics"]["class_histogram"]) == 3
    assert report.max_class_entropy == pytest.approx(np.log(3))
    with pytest.raises(ValueError, match=r"must be uint8 images \(N, 32, 32, 3\).*trained on the folder"):
        pipe.invert(np.zeros((2, 28, 28), np.uint8))


def test_the_commands_sample_evaluate_and_edit_a_colour_run(colour_run, child_env, tmp_path):
    _, run = colour_run
    out = tmp_path / "blue.npz"
    done = run_command("nets.sample", "--checkpoint", run, "--class", "blue", "--n", "12", "--steps", "4",
                       "--out", out)
    assert done.returncode == 0, done.stderr
    saved = np.load(out)
    assert saved["images"].shape == (12, 32, 32, 3)
    assert list(saved["class_names"]) == ["blue", "green", "red"]
    done = run_command("nets.evaluate", "--samples", out, "--checkpoint", run, "--nll-images", "0")
    assert done.returncode == 0, done.stderr
    assert "class histogram (0-2)" in done.stdout
    edit = tmp_path / "inpaint.npz"
    done = run_command("nets.edit", "inpaint", "--checkpoint", run, "--index", "3", "--n", "2",
                       "--steps", "4", "--resample", "1", "--mask", "center", "--out", edit)
    assert done.returncode == 0, done.stderr
    result = np.load(edit)
    assert result["images"].shape == (2, 32, 32, 3) and result["known"].shape == (32, 32)
    known = result["known"]
    assert not known[8:24, 8:24].any() and known.sum() == 32 * 32 - 16 * 16  # the mask scales
    np.testing.assert_array_equal(result["images"][:, known], np.broadcast_to(result["original"][known],
                                                                              (2, known.sum(), 3)))


def test_a_colour_teacher_distils_into_a_student_of_its_dataset(colour_run, cache, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    _, run = colour_run
    out = nets.distill(nets.DistillConfig(teacher=str(run), run_dir=str(tmp_path / "d"), from_steps=4,
                                          to_steps=2, steps_per_round=2, batch_size=8, precision="fp32",
                                          figures=False))
    student = nets.load(out)
    assert student.loaded.dataset.class_names == ("blue", "green", "red")
    assert student.sample(2, label="green").images.shape == (2, 32, 32, 3)


def test_the_unet_presets_follow_the_size():
    default = nets.TrainConfig().unet
    assert unet_for_data(default, (1, 28, 28), 10) == default  # MNIST's model is unchanged
    at32 = unet_for_data(default, (3, 32, 32), 10)
    assert (at32["channel_mults"], at32["attention_resolutions"], at32["in_channels"]) == ([1, 2, 2], [8], 3)
    at64 = unet_for_data(default, (3, 64, 64), 0)
    assert (tuple(at64["channel_mults"]), tuple(at64["attention_resolutions"])) == preset_levels(64)
    assert preset_levels(64) == ((1, 2, 2, 2), (16, 8)) and at64["num_classes"] == 0
    own = unet_for_data({**default, "channel_mults": [1, 2]}, (1, 64, 64), 0)
    assert own["channel_mults"] == [1, 2]  # levels given by the user stay
    with pytest.raises(ValueError, match="multiple of 4"):
        unet_for_data(default, (1, 30, 30), 10)


def test_an_unlabelled_64_pixel_folder_trains_an_unconditional_four_level_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    (tmp_path / "photos").mkdir()
    for i in range(16):
        Image.new("RGB", (80, 64), (i * 10, 0, 0)).save(tmp_path / "photos" / f"{i}.jpg")
    run = nets.fit(tiny_config(str(tmp_path / "photos"), tmp_path / "runs" / "u", unet={"base_channels": 8},
                               max_steps=1))
    unet = run.config.unet
    assert (unet["image_size"], unet["in_channels"], unet["channel_mults"]) == (64, 3, [1, 2, 2, 2])
    assert not run.config.conditional and unet["num_classes"] == 0
    pipe = nets.load(run)
    with pytest.raises(ValueError, match="unlabelled"):
        pipe.evaluate(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="unconditional"):
        pipe.sample(1, label=0)


def test_a_checkpoint_from_before_datasets_loads_as_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    (tmp_path / "digits").mkdir()
    for i in range(8):
        Image.new("L", (28, 28), i).save(tmp_path / "digits" / f"{i}.png")
    run = nets.fit(tiny_config(str(tmp_path / "digits"), tmp_path / "runs" / "old", max_steps=1))
    state = load_checkpoint(run.run_dir)
    del state["dataset"]
    save_checkpoint(state, run.run_dir / "checkpoint.pt")
    assert nets.load(run.run_dir).loaded.dataset == MNIST_INFO
    state["config"]["unet"]["in_channels"] = 3  # ... unless it is not an MNIST model
    save_checkpoint(state, run.run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="records no dataset and is not an MNIST model"):
        nets.load(run.run_dir)


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "no-such-set"], "--dataset: 'no-such-set' is neither a dataset name"),
    (["--dataset", "{blobs}", "--image-size", "30"], "--image-size: .*multiple of 4"),
    (["--dataset", "{broken}"], "bad.png: is not an image Pillow can read"),
])
def test_bad_data_is_one_line_and_exit_2(tmp_path, child_env, colour_run, flags, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    Image.new("L", (8, 8)).save(broken / "good.png")
    argv = [f.format(blobs=colour_run[0], broken=broken) for f in flags]
    done = run_command("nets.train", *argv, "--max-steps", "1", "--run-dir", tmp_path / "r", "--no-figures")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), done.stderr
    assert not (tmp_path / "r").exists()


def test_a_class_not_in_the_dataset_and_images_of_another_shape_are_refused(colour_run, child_env, tmp_path):
    _, run = colour_run
    done = run_command("nets.sample", "--checkpoint", run, "--class", "purple", "--n", "1")
    assert done.returncode == 2 and "--class: 'purple' is not a class" in done.stderr
    other = tmp_path / "grey"
    for i in range(3):
        (other / "a").mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28)).save(other / "a" / f"{i}.png")
    done = run_command("nets.edit", "invert", "--checkpoint", run, "--dataset", other, "--steps", "3")
    assert done.returncode == 2
    assert "does not have the image shape of this model" in done.stderr.strip().splitlines()[-1]


def test_a_resumed_run_whose_folder_no_longer_fits_its_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    data = tmp_path / "images"
    data.mkdir()
    for i in range(8):
        Image.new("L", (28, 28), i).save(data / f"{i}.png")
    run = nets.fit(tiny_config(str(data), tmp_path / "runs" / "r", max_steps=1))
    for i in range(8):  # the same names, now in colour
        Image.new("RGB", (28, 28), (i, 0, 9)).save(data / f"{i}.png")
    with pytest.raises(nets.ConfigError, match="no longer fits the run's model") as err:
        nets.resume(run, max_steps=2)
    assert err.value.field == "dataset"
