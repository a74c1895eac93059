"""Datasets other than MNIST, offline: every format is written by the tests themselves (IDX files
of MNIST's sizes, CIFAR-10 binary batches and its .tar.gz, folders of PNG/JPEG/BMP images in every
Pillow mode that matters) and read back through ``nets.data.load_dataset``."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nets.data import (
    NAMED_SETS,
    DatasetUnavailableError,
    MnistFormatError,
    load_dataset,
    training_and_held_out,
)
from nets.data import folder as folder_module
from nets.data.catalog import named_set
from nets.data.cifar10 import RECORD_BYTES
from nets.data.folder import load_folder, scan_folder
from nets.fields import ConfigError
from nets.pixels import images_to_uint8, to_training_tensor


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test decodes into a cache of its own (hidden: test folders may be tmp_path itself)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))


# ---- the catalog and the IDX sets --------------------------------------------------------------

def test_every_named_set_has_its_own_checksums_mirrors_and_ten_class_names():
    md5s = [spec.gz_md5 for s in NAMED_SETS.values() for spec in s.checksums.values()]
    assert len(md5s) == len(set(md5s)) == 13  # 4 + 4 + 4 IDX files and CIFAR-10's archive
    for s in NAMED_SETS.values():
        assert len(s.class_names) == len(set(s.class_names)) == 10 and s.mirrors
    assert named_set("Fashion_MNIST").name == "fashion-mnist" and named_set("photos/") is None


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_split(folder: Path, images: np.ndarray, labels: np.ndarray, split: str = "test") -> None:
    prefix = "t10k" if split == "test" else "train"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_idx_sets_read_their_files_with_their_own_class_names(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8)  # the official file sizes
    labels = rng.integers(0, 10, 10_000, dtype=np.uint8)
    write_idx_split(tmp_path, images, labels)
    got = load_dataset(name, tmp_path, "test", download=False)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)
    assert got.info.class_names == NAMED_SETS[name].class_names and got.info.shape == (1, 28, 28)


def test_a_missing_idx_set_names_itself_and_its_folder(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"Fashion-MNIST test split unavailable.*downloading"):
        load_dataset("fashion-mnist", tmp_path, "test", download=False)


def test_a_named_set_asked_for_another_size_and_colour_is_resized(tmp_path):
    images = np.zeros((10_000, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    write_idx_split(tmp_path, images, np.zeros(10_000, np.uint8))
    got = load_dataset("kmnist", tmp_path, "test", image_size=64, channels=3, download=False)
    assert got.images.shape == (10_000, 64, 64, 3) and got.info.shape == (3, 64, 64)
    assert got.images[0, 32, 32].tolist() == [255, 255, 255] and got.images[0, 2, 2].tolist() == [0, 0, 0]


def test_neither_a_name_nor_a_folder_is_a_config_error_naming_dataset(tmp_path):
    with pytest.raises(ConfigError, match="neither a dataset name") as err:
        load_dataset(str(tmp_path / "fashoin"))
    assert err.value.field == "dataset"


# ---- CIFAR-10, binary --------------------------------------------------------------------------

def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records, their (n, 32, 32, 3) images and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1).tobytes()
    return raw, planes.transpose(0, 2, 3, 1), labels


def write_cifar(folder: Path, per_batch: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        raw, images, labels = cifar_records(per_batch, i)
        (folder / name).write_bytes(raw)
        out[name] = (images, labels)
    return out


def test_cifar10_binary_records_are_label_then_red_green_blue_planes(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-bin")
    train = load_dataset("cifar10", tmp_path, "train", download=False)
    test = load_dataset("cifar10", tmp_path, "test", download=False)
    want = np.concatenate([written[f"data_batch_{k}.bin"][0] for k in range(1, 6)])
    np.testing.assert_array_equal(train.images, want)
    np.testing.assert_array_equal(test.labels, written["test_batch.bin"][1])
    assert train.images.shape == (35, 32, 32, 3) and train.info.shape == (3, 32, 32)
    assert train.info.class_names[3] == "cat"


def test_cifar10_batch_of_the_wrong_length_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * (RECORD_BYTES * 2 + 5))
    with pytest.raises(MnistFormatError, match=r"test_batch.bin: 6,151 bytes is not a whole number"):
        load_dataset("cifar10", tmp_path, "test", download=False)


def test_cifar100_labels_are_refused(tmp_path):
    write_cifar(tmp_path)
    raw = bytearray((tmp_path / "test_batch.bin").read_bytes())
    raw[RECORD_BYTES] = 42
    (tmp_path / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(MnistFormatError, match="record 1 has label 42"):
        load_dataset("cifar10", tmp_path, "test", download=False)


def test_the_pickled_python_version_is_refused_never_unpickled(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(DatasetUnavailableError, match=r"pickled.*cifar-10-binary\.tar\.gz"):
        load_dataset("cifar10", tmp_path, "train")


def test_the_binary_archive_is_extracted_by_member_name_only(tmp_path):
    written = write_cifar(tmp_path / "src" / "cifar-10-batches-bin")
    archive = tmp_path / "data" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((tmp_path / "src" / "cifar-10-batches-bin").iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-bin/{path.name}")
        evil = tarfile.TarInfo("../../escaped.bin")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
    got = load_dataset("cifar10", archive.parent, "test", download=False)
    np.testing.assert_array_equal(got.images, written["test_batch.bin"][0])
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path.parent / "escaped.bin").exists()


# ---- folders of images ---------------------------------------------------------------------------

def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_class_subfolders_give_labels_and_names_in_a_class_mixing_order(tmp_path):
    for name, value in (("cat", 40), ("dog", 200)):
        for i in range(20):
            save(tmp_path / name / f"{i:02d}.png", Image.new("L", (28, 28), value))
    got = load_dataset(str(tmp_path))
    assert got.info.class_names == ("cat", "dog") and got.info.shape == (1, 28, 28)
    assert got.images.shape == (40, 28, 28)
    np.testing.assert_array_equal(got.images[:, 0, 0], np.where(got.labels == 0, 40, 200))
    _, held = training_and_held_out(len(got), holdout=10)
    assert set(got.labels[held]) == {0, 1}  # the last rows are not all one class


def test_a_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", Image.new("L", (28, 28), i))
    got = load_dataset(str(tmp_path))
    assert got.labels is None and not got.info.labelled and got.info.class_names == ()


def test_grey_rgb_rgba_and_palette_images_follow_one_documented_conversion(tmp_path):
    save(tmp_path / "a" / "grey.png", Image.new("L", (28, 28), 100))
    save(tmp_path / "a" / "rgb.jpg", Image.new("RGB", (28, 28), (250, 0, 0)), quality=100)
    save(tmp_path / "b" / "rgba.png", Image.new("RGBA", (28, 28), (200, 100, 50, 128)))
    palette = Image.new("P", (28, 28), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    save(tmp_path / "b" / "palette.png", palette)
    got = load_folder(tmp_path, progress=False)
    assert got.look.channels == 3 and got.images.shape == (4, 28, 28, 3)
    by_name = dict(zip(got.scan.files, got.images, strict=True))
    assert by_name["a/grey.png"][5, 5].tolist() == [100, 100, 100]  # grey repeated
    assert abs(int(by_name["a/rgb.jpg"][5, 5, 0]) - 250) <= 2
    assert by_name["b/rgba.png"][5, 5].tolist() == [100, 50, 25]  # over black: value × 128/255
    assert by_name["b/palette.png"][5, 5].tolist() == [10, 20, 30]
    assert any("alpha" in note for note in got.look.notes)


def test_grey_images_stay_one_channel_unless_colour_is_asked_for(tmp_path):
    save(tmp_path / "x" / "one.png", Image.new("LA", (28, 28), (180, 255)))
    sixteen = Image.fromarray(np.full((28, 28), 257 * 90, dtype=np.uint16))
    save(tmp_path / "x" / "deep.png", sixteen)
    assert load_dataset(str(tmp_path)).info.shape == (1, 28, 28)
    got = load_folder(tmp_path, progress=False)
    assert sorted(got.images[:, 3, 3].tolist()) == [90, 180]  # 16-bit scaled by 1/257
    assert load_dataset(str(tmp_path), channels=3).images.shape == (2, 28, 28, 3)


def test_odd_sizes_are_resized_by_the_shorter_side_and_centre_cropped(tmp_path):
    wide = np.zeros((28, 56), np.uint8)
    wide[:, 14:42] = 255  # the middle 28 columns: what the centre crop keeps
    save(tmp_path / "wide.png", Image.fromarray(wide))
    save(tmp_path / "small.png", Image.new("L", (14, 14), 255))
    save(tmp_path / "square.png", Image.new("L", (28, 28), 7))
    got = load_folder(tmp_path, progress=False)
    assert got.look.size == 28  # the most common shorter side
    by_name = dict(zip(got.scan.files, got.images, strict=True))
    assert by_name["wide.png"].min() == 255 and by_name["small.png"].min() == 255
    assert np.all(by_name["square.png"] == 7)  # a 28×28 image is kept exactly
    assert any("not 28×28" in note for note in got.look.notes)


def test_the_second_load_memory_maps_the_cache_and_a_changed_file_is_decoded_again(tmp_path):
    root = tmp_path / "set"
    paths = [save(root / "c" / f"{i}.png", Image.new("L", (28, 28), i)) for i in range(5)]
    first = load_folder(root, progress=False)
    with pytest.MonkeyPatch.context() as mp:  # a cached run opens no image, not even its header
        mp.setattr(folder_module, "open_image", lambda path: pytest.fail(f"{path} was opened"))
        second = load_folder(root, progress=False)
    assert not first.from_cache and second.from_cache
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    save(paths[0], Image.new("L", (28, 28), 99))
    os.utime(paths[0], ns=(1, 1))  # a new time (and the same size) is a new key
    third = load_folder(root, progress=False)
    assert not third.from_cache and 99 in third.images[:, 0, 0]


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "holds no images \\(it is empty\\)"),
    (lambda root: (root.mkdir(), (root / "notes.txt").write_text("hi")),
     "holds no images: 1 file \\(.txt\\)"),
    (lambda root: (save(root / "a" / "x.png", Image.new("L", (8, 8))), (root / "b").mkdir()),
     "b: is a class folder with no images"),
    (lambda root: (save(root / "a" / "x.png", Image.new("L", (8, 8))),
                   save(root / "y.png", Image.new("L", (8, 8)))),
     "beside its class folders"),
])
def test_a_folder_without_usable_images_says_what_is_wrong(tmp_path, make, message):
    root = tmp_path / "set"
    make(root)
    with pytest.raises(MnistFormatError, match=message):
        scan_folder(root)


def test_a_corrupt_image_among_good_ones_is_named_and_nothing_is_cached(tmp_path):
    save(tmp_path / "set" / "good.png", Image.new("L", (28, 28)))
    bad = tmp_path / "set" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(MnistFormatError, match="bad.png: is not an image Pillow can read"):
        load_dataset(str(tmp_path / "set"))
    assert not list((tmp_path / ".cache").rglob("images.npy"))


def test_a_truncated_image_is_named_when_it_is_decoded(tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(data, "PNG")
    (tmp_path / "cut.png").write_bytes(data.getvalue()[:-40])
    with pytest.raises(MnistFormatError, match="cut.png: is damaged"):
        load_folder(tmp_path, progress=False)


def test_an_image_past_the_decompression_bomb_limit_is_refused(tmp_path, monkeypatch):
    save(tmp_path / "big.png", Image.new("L", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels is past 2 × 1,000
    with pytest.raises(MnistFormatError, match="big.png: is larger than Pillow's decompression-bomb limit"):
        load_dataset(str(tmp_path))


def test_colour_pixels_cross_to_the_network_and_back_exactly():
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = to_training_tensor(images)
    assert tuple(x.shape) == (4, 3, 8, 8) and float(x.abs().max()) <= 1.0
    assert x[1, 2, 3, 4].item() == pytest.approx(images[1, 3, 4, 2] / 127.5 - 1, abs=1e-6)
    np.testing.assert_array_equal(images_to_uint8(x), images)


def test_large_images_are_read_at_the_largest_preset_unless_a_size_is_asked_for(tmp_path):
    for i in range(2):
        save(tmp_path / "big" / f"{i}.png", Image.new("RGB", (300, 200), (i, 50, 90)))
    assert load_dataset(str(tmp_path / "big")).info.shape == (3, 64, 64)
    assert load_dataset(str(tmp_path / "big"), image_size=96).images.shape == (2, 96, 96, 3)
