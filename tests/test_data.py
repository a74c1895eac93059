"""nets.data: the IDX reader, split loading and its checks, and the uint8 <-> [-1, 1] mapping.

Files are real files the tests write (raw and gzip) with an independent IDX writer; the real
MNIST test split is read where it exists (`real_mnist_dir`).
"""

import gzip
import hashlib
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from nets.data import (
    DEFAULT_MIRRORS,
    MNIST_CHECKSUMS,
    FileChecksum,
    MnistFormatError,
    default_data_dir,
    load_mnist,
    mnist_mirrors,
    read_idx,
)
from nets.pixels import images_to_uint8, to_training_tensor

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# Documented in /work/shared/data/mnist/README.md (SHA-256 of the decompressed files).
T10K_SHA256 = {
    IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    """An unsigned-byte IDX file, written from the format description, not from nets.data."""
    head = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return head + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def reference_parse(data: bytes) -> np.ndarray | None:
    """Independent IDX parse of decompressed bytes: the array, or None when malformed."""
    if len(data) < 4 or data[:3] != b"\0\0\x08" or data[3] == 0:
        return None
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = data[4 + 4 * ndim:]
    if len(payload) != int(np.prod(shape, dtype=object)):
        return None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def synthetic_split(directory: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True
                    ) -> dict[str, FileChecksum]:
    """Write a test split into ``directory``; return the checksum table describing it."""
    table = {}
    for name, array in ((IMAGES, images), (LABELS, labels)):
        raw = idx_bytes(array)
        write(directory / (f"{name}.gz" if gz else name), raw, gz)
        table[name] = FileChecksum(len(raw), None, hashlib.sha256(raw).hexdigest())
    return table


def digits(n: int, rows: int = 28, cols: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, rows, cols), dtype=np.uint8),
            (np.arange(n) % 10).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# read_idx on well-formed files


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_returns_the_written_uint8_array(tmp_path, gz):
    images, labels = digits(3, rows=5, cols=7)
    got_images = read_idx(write(tmp_path / "images", idx_bytes(images), gz))
    got_labels = read_idx(write(tmp_path / "labels", idx_bytes(labels), gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (3, 5, 7)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (3,)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_detects_gzip_by_magic_bytes_not_by_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    gz_named_raw = write(tmp_path / "labels.gz", idx_bytes(labels), gz=False)
    raw_named_gz = write(tmp_path / "labels.idx", idx_bytes(labels), gz=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), labels)
    np.testing.assert_array_equal(read_idx(raw_named_gz), labels)


def test_read_idx_reads_an_empty_dimension(tmp_path):
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert read_idx(write(tmp_path / "empty", idx_bytes(empty), gz=True)).shape == (0, 28, 28)


# ---------------------------------------------------------------------------------------------
# read_idx on malformed files: MnistFormatError naming the file and the problem

_LABELS10 = np.arange(10, dtype=np.uint8)
MALFORMED = {
    "empty file": (b"", "magic number"),
    "wrong magic": (idx_bytes(_LABELS10, b"\x12\x34\x08\x01"), "bad magic number 0x12340801"),
    "not unsigned byte": (idx_bytes(_LABELS10, b"\0\0\x0d\x01"), "data type 0x0D"),
    "zero dimensions": (b"\0\0\x08\x00", "0 dimensions"),
    "header cut short": (b"\0\0\x08\x03" + b"\0\0\0\x05\0\0", "ends inside the header"),
    "payload truncated": (idx_bytes(_LABELS10)[:-3], "truncated"),
    "payload too long": (idx_bytes(_LABELS10) + b"\x07", "too long"),
    "dims disagree with payload": (b"\0\0\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(784),
                                   "2 x 28 x 28 = 1,568 bytes"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_read_idx_rejects_malformed_file_naming_file_and_problem(tmp_path, case, gz):
    data, problem = MALFORMED[case]
    path = write(tmp_path / "bad-file", data, gz)
    with pytest.raises(MnistFormatError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def _valid_gzip() -> bytes:
    return gzip.compress(idx_bytes(digits(4)[0]), mtime=0)


@pytest.mark.parametrize("damage", ["flipped bytes", "cut short", "bad CRC", "bad method"])
def test_read_idx_rejects_corrupt_gzip(tmp_path, damage):
    data = bytearray(_valid_gzip())
    if damage == "flipped bytes":
        data[20:40] = bytes(b ^ 0xFF for b in data[20:40])
    elif damage == "cut short":
        data = data[: len(data) // 2]
    elif damage == "bad CRC":
        data[-8] ^= 0xFF  # the CRC-32 of the trailer
    else:
        data[2] = 7  # compression method: only 8 (deflate) exists
    path = write(tmp_path / "damaged.gz", bytes(data), gz=False)
    with pytest.raises(MnistFormatError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_refuses_a_declared_size_above_the_limit(tmp_path):
    path = write(tmp_path / "big", idx_bytes(np.zeros((4, 4), dtype=np.uint8)), gz=True)
    with pytest.raises(MnistFormatError, match="more than the 15 allowed"):
        read_idx(path, max_payload_bytes=15)


# ---------------------------------------------------------------------------------------------
# Fuzz: any bytes give an array equal to an independent parse, or MnistFormatError; never more
# memory or time than the file itself justifies. Sizes are bounded to keep each example ~1 ms.


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzzed"


def _read_or_error(path: Path) -> np.ndarray | None:
    try:
        return read_idx(path)
    except MnistFormatError:
        return None


@given(st.binary(max_size=300))
@example(b"")
@example(b"\0\0\x08\x01\0\0\0\0")  # a valid empty label file
@example(b"\x1f\x8b")  # gzip magic and nothing else
@example(b"\x1f\x8b\x08\x00" + bytes(6))  # a gzip header cut short
def test_read_idx_on_arbitrary_bytes_matches_reference_or_raises_format_error(fuzz_file, data):
    fuzz_file.write_bytes(data)
    got = _read_or_error(fuzz_file)
    expected = None if data[:2] == b"\x1f\x8b" else reference_parse(data)
    if expected is None:
        assert got is None
    else:
        np.testing.assert_array_equal(got, expected)
        assert got.shape == expected.shape


@given(st.binary(max_size=300))
def test_read_idx_on_gzipped_arbitrary_bytes_matches_reference_or_raises(fuzz_file, data):
    fuzz_file.write_bytes(gzip.compress(data, mtime=0))
    got, expected = _read_or_error(fuzz_file), reference_parse(data)
    assert (got is None) == (expected is None)
    if expected is not None:
        np.testing.assert_array_equal(got, expected)


@given(dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
       tail=st.binary(max_size=64), gz=st.booleans())
@example(dims=[2**32 - 1] * 3, tail=b"", gz=True)
@example(dims=[60000, 28, 28], tail=bytes(64), gz=False)
@example(dims=[2**30], tail=bytes(64), gz=True)  # exactly the default limit, but a short stream
def test_read_idx_with_lying_huge_dims_fails_fast_without_allocating(fuzz_file, dims, tail, gz):
    data = bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + tail
    write(fuzz_file, data, gz)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        got = _read_or_error(fuzz_file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 4 * 2**20
    assert (got is None) == (reference_parse(data) is None)


@given(position=st.integers(0, 10**6), xor=st.integers(1, 255))
def test_a_flipped_byte_in_a_gzip_idx_file_is_detected_or_harmless(fuzz_file, position, xor):
    good = _valid_gzip()
    data = bytearray(good)
    data[position % len(data)] ^= xor
    fuzz_file.write_bytes(bytes(data))
    got = _read_or_error(fuzz_file)
    if got is not None:  # header fields gzip does not check (mtime, OS) may change harmlessly
        np.testing.assert_array_equal(got, reference_parse(gzip.decompress(good)))


# ---------------------------------------------------------------------------------------------
# load_mnist on synthetic splits


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_mnist_returns_read_only_uint8_arrays(tmp_path, gz):
    images, labels = digits(12)
    table = synthetic_split(tmp_path, images, labels, gz)
    split = load_mnist(tmp_path, "test", download=False, checksums=table)
    assert split.images.dtype == np.uint8 and split.images.shape == (12, 28, 28)
    assert split.labels.dtype == np.uint8 and split.labels.shape == (12,)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    assert len(split) == 12
    assert not split.images.flags.writeable and not split.labels.flags.writeable


def test_load_mnist_rejects_image_and_label_count_mismatch(tmp_path):
    images, _ = digits(5)
    table = synthetic_split(tmp_path, images, np.arange(6, dtype=np.uint8))
    with pytest.raises(MnistFormatError, match="holds 5 images but .* holds 6 labels") as info:
        load_mnist(tmp_path, "test", download=False, checksums=table)
    assert IMAGES in str(info.value) and LABELS in str(info.value)


def test_load_mnist_rejects_labels_above_nine(tmp_path):
    images, _ = digits(4)
    table = synthetic_split(tmp_path, images, np.array([0, 9, 10, 200], dtype=np.uint8))
    with pytest.raises(MnistFormatError, match=r"0\.\.9; found 10 at index 2 \(2 such") as info:
        load_mnist(tmp_path, "test", download=False, checksums=table)
    assert info.value.path == str(tmp_path / f"{LABELS}.gz")


def test_load_mnist_rejects_images_that_are_not_28_by_28(tmp_path):
    images, labels = digits(3, rows=27, cols=28)
    table = synthetic_split(tmp_path, images, labels)
    with pytest.raises(MnistFormatError, match="images are 27x28, expected 28x28") as info:
        load_mnist(tmp_path, "test", download=False, checksums=table)
    assert info.value.path == str(tmp_path / f"{IMAGES}.gz")


def test_load_mnist_rejects_a_label_file_where_images_belong(tmp_path):
    _, labels = digits(3)
    table = synthetic_split(tmp_path, labels, labels)
    with pytest.raises(MnistFormatError, match="expected an image file") as info:
        load_mnist(tmp_path, "test", download=False, checksums=table)
    assert IMAGES in info.value.path


def test_load_mnist_rejects_a_payload_checksum_mismatch(tmp_path):
    images, labels = digits(3)
    table = synthetic_split(tmp_path, images, labels)
    table[LABELS] = FileChecksum(table[LABELS].size, None, "0" * 64)
    with pytest.raises(MnistFormatError, match="SHA-256 .* differs.*delete it") as info:
        load_mnist(tmp_path, "test", download=False, checksums=table)
    assert LABELS in info.value.path


def test_load_mnist_checks_local_files_against_the_official_sizes(tmp_path):
    images, labels = digits(3)
    synthetic_split(tmp_path, images, labels)  # its own table is ignored: the default is used
    with pytest.raises(MnistFormatError, match="decompressed size 2,368 bytes differs from the "
                                               "expected 7,840,016"):
        load_mnist(tmp_path, "test", download=False)


def test_load_mnist_rejects_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="unknown MNIST split: 'validation'"):
        load_mnist(tmp_path, "validation", download=False)


def test_checksum_table_holds_the_official_sizes_and_test_split_digests():
    assert {name: spec.size for name, spec in MNIST_CHECKSUMS.items()} == {
        "train-images-idx3-ubyte": 16 + 60000 * 28 * 28, "train-labels-idx1-ubyte": 8 + 60000,
        IMAGES: 16 + 10000 * 28 * 28, LABELS: 8 + 10000}
    assert all(MNIST_CHECKSUMS[name].sha256 == digest for name, digest in T10K_SHA256.items())
    assert all(len(spec.gz_md5) == 32 for spec in MNIST_CHECKSUMS.values())


# ---------------------------------------------------------------------------------------------
# The real MNIST test split


def _decompressed(directory: Path, name: str) -> bytes:
    path = directory / name if (directory / name).exists() else directory / f"{name}.gz"
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_real_test_split_is_10000_digits_matching_the_documented_sha256(real_mnist_dir):
    split = load_mnist(real_mnist_dir, "test", download=False)
    assert split.images.dtype == np.uint8 and split.images.shape == (10_000, 28, 28)
    assert split.labels.dtype == np.uint8 and split.labels.shape == (10_000,)
    assert set(np.unique(split.labels).tolist()) == set(range(10))
    for name, digest in T10K_SHA256.items():
        assert hashlib.sha256(_decompressed(real_mnist_dir, name)).hexdigest() == digest
    assert split.images.max() == 255 and split.images.min() == 0


def test_real_test_split_round_trips_through_the_training_tensor(real_mnist_dir):
    images = load_mnist(real_mnist_dir, "test", download=False).images
    x = to_training_tensor(images)
    assert x.dtype == torch.float32 and x.shape == (10_000, 1, 28, 28)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(images_to_uint8(x), images)


# ---------------------------------------------------------------------------------------------
# uint8 <-> [-1, 1]


def test_training_tensor_is_x_over_127_5_minus_1():
    images = np.array([[[0, 1, 127], [128, 254, 255]]], dtype=np.uint8)  # (1, 2, 3)
    x = to_training_tensor(images, "cpu")
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2, 3) and x.device.type == "cpu"
    expected = images.astype(np.float64) / 127.5 - 1.0  # the formula, in float64
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=0, atol=1e-7)
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 1, 2] == 1.0


def test_uint8_round_trip_is_exact_for_every_value():
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    back = images_to_uint8(to_training_tensor(every))
    assert back.dtype == np.uint8 and back.shape == (1, 16, 16)
    np.testing.assert_array_equal(back, every)


def test_images_to_uint8_rounds_and_clips():
    # (x + 1) * 127.5 = 0.4, 0.6, 254.6, and out-of-range / NaN values
    x = np.array([[[0.4 / 127.5 - 1, 0.6 / 127.5 - 1, 254.6 / 127.5 - 1, -3.0, 7.0, np.nan]]])
    np.testing.assert_array_equal(images_to_uint8(x), [[[0, 1, 255, 0, 255, 0]]])
    as_tensor = torch.tensor(x, dtype=torch.float32).unsqueeze(1)  # (1, 1, 1, 6)
    np.testing.assert_array_equal(images_to_uint8(as_tensor), [[[0, 1, 255, 0, 255, 0]]])


def test_conversions_reject_wrong_shapes_and_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        to_training_tensor(np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        images_to_uint8(np.zeros((2, 2, 28, 28)))  # neither grey nor RGB


# ---------------------------------------------------------------------------------------------
# Where the data lives and where it comes from


def test_default_data_dir_prefers_ddpm_data_dir_then_xdg_cache_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DDPM_DATA_DIR")
    assert default_data_dir() == tmp_path / "xdg" / "ddpm" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore it
    assert default_data_dir() == tmp_path / "home" / ".cache" / "ddpm" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "ddpm" / "mnist"


def test_mirrors_come_from_argument_then_environment_then_defaults(monkeypatch):
    monkeypatch.delenv("DDPM_MNIST_MIRRORS", raising=False)
    assert mnist_mirrors() == DEFAULT_MIRRORS
    assert DEFAULT_MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    monkeypatch.setenv("DDPM_MNIST_MIRRORS", " http://a/mnist/ ,, http://b/ ")
    assert mnist_mirrors() == ("http://a/mnist/", "http://b/")
    assert mnist_mirrors(["http://c/"]) == ("http://c/",)
