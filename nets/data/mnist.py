"""MNIST splits from a data directory: found or downloaded, checked, and cut into the images a
model trains on and those it never sees.

Files. MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0) is four IDX files, gzipped on the mirrors:

    name                      array                     decompressed bytes
    train-images-idx3-ubyte   (60000, 28, 28) uint8     47,040,016
    train-labels-idx1-ubyte   (60000,) uint8 in 0..9        60,008
    t10k-images-idx3-ubyte    (10000, 28, 28) uint8      7,840,016
    t10k-labels-idx1-ubyte    (10000,) uint8 in 0..9        10,008

`load_mnist` looks for each file in the data directory under its plain name or with ``.gz`` and
downloads the missing ones from the first mirror that serves a verified copy
(`nets.data.fetch`); every file, local or downloaded, is checked against `nets.data.checksums`.
The IDX reader is `nets.data.idx`; pixels are `nets.pixels`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from nets.data import fetch
from nets.data.catalog import CIFAR10_ARCHIVE, NAMED_SETS, NamedSet
from nets.data.checksums import FileChecksum, integrity_problem
from nets.data.fetch import MIRRORS_ENV
from nets.data.idx import MnistFormatError, read_idx_with_header
from nets.fields import ConfigError
from nets.pixels import IMAGE_SIZE, NUM_CLASSES

Split = Literal["train", "test"]
DATA_DIR_ENV = "DDPM_DATA_DIR"


class MnistUnavailableError(RuntimeError):
    """A named set's files are not in the data directory and no mirror served a verified copy
    (``DatasetUnavailableError`` is the same class)."""


DatasetUnavailableError = MnistUnavailableError

MNIST_ERRORS = (MnistUnavailableError, MnistFormatError)  # what `load_mnist` raises for bad data

# split -> (images file, labels file)
SPLIT_FILES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
})


@dataclass(frozen=True)
class MnistArrays:
    """One split, read-only: ``images`` (N, 28, 28) uint8 and ``labels`` (N,) uint8 in 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_mnist(data_dir: str | os.PathLike[str] | None, split: Split, download: bool = True,
               base_urls: Sequence[str] | None = None, *,
               checksums: Mapping[str, FileChecksum] | None = None,
               timeout: float = 30.0) -> MnistArrays:
    """Load one MNIST split: `load_idx_set` of MNIST (its mirrors: `nets.data.fetch.mnist_mirrors`)."""
    return load_idx_set(NAMED_SETS["mnist"], data_dir, split, download, base_urls,
                        checksums=checksums, timeout=timeout)


def load_idx_set(dataset: NamedSet, data_dir: str | os.PathLike[str] | None, split: Split,
                 download: bool = True, base_urls: Sequence[str] | None = None, *,
                 checksums: Mapping[str, FileChecksum] | None = None,
                 timeout: float = 30.0) -> MnistArrays:
    """Load one split of the MNIST-format set ``dataset`` (MNIST, Fashion-MNIST, KMNIST) from
    ``data_dir`` (None: `default_data_dir(dataset.name)`), downloading if needed.

    Files are found as ``<name>`` or ``<name>.gz``; missing ones are downloaded when ``download``
    from ``base_urls`` (default: the set's mirrors), each HTTP read bounded by ``timeout``
    seconds. ``checksums`` replaces the set's own (tests, private data); it must hold the
    split's two file names. Returns read-only arrays: images (N, 28, 28) uint8, labels (N,) uint8.

    Raises `MnistUnavailableError` when a file is missing and cannot be downloaded, and
    `MnistFormatError` (naming the file) when a file is malformed or fails its checksum.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown MNIST split: {split!r} (expected 'train' or 'test')")
    data_dir = default_data_dir(dataset.name) if data_dir is None else Path(data_dir).expanduser()
    table = dataset.checksums if checksums is None else checksums
    images_name, labels_name = SPLIT_FILES[split]
    specs = [_checksum_for(table, name) for name in (images_name, labels_name)]
    mirrors = None
    if download:  # MNIST's: $DDPM_MNIST_MIRRORS too (fetch.mnist_mirrors)
        own = tuple(base_urls or dataset.mirrors)
        mirrors = fetch.mnist_mirrors(base_urls) if dataset.name == "mnist" else own
    where = Where(dataset.title, data_dir, split)
    paths = [_find_or_download(where, name, spec, mirrors, timeout)
             for name, spec in zip((images_name, labels_name), specs, strict=True)]
    (images_path, labels_path), (images_spec, labels_spec) = paths, specs

    images_header, images = read_idx_with_header(images_path, images_spec.size)
    labels_header, labels = read_idx_with_header(labels_path, labels_spec.size)
    _check_ndim(images_path, images, 3, "an image file (magic 0x00000803)")
    _check_ndim(labels_path, labels, 1, "a label file (magic 0x00000801)")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MnistFormatError(images_path, f"images are {images.shape[1]}x{images.shape[2]}, "
                                            f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise MnistFormatError(images_path, f"holds {len(images):,} images but {labels_path} "
                                            f"holds {len(labels):,} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise MnistFormatError(labels_path, f"label values must be 0..{NUM_CLASSES - 1}; found "
                                            f"{labels[bad[0]]} at index {bad[0]} ({bad.size:,} such labels)")
    for path, header, array, spec in ((images_path, images_header, images, images_spec),
                                      (labels_path, labels_header, labels, labels_spec)):
        problem = integrity_problem(header, array, spec)
        if problem is not None:
            raise MnistFormatError(path, f"{problem}; the file is damaged or not the official "
                                         f"{dataset.title} file: delete it to download it again")
    images.setflags(write=False)
    labels.setflags(write=False)
    return MnistArrays(images=images, labels=labels)


def _checksum_for(table: Mapping[str, FileChecksum], name: str) -> FileChecksum:
    if name not in table:
        raise ValueError(f"the checksum table has no entry for {name}")
    return table[name]


def _check_ndim(path: Path, array: np.ndarray, ndim: int, what: str) -> None:
    if array.ndim != ndim:
        raise MnistFormatError(path, f"has {array.ndim} dimensions {array.shape}, expected "
                                     f"{what} with {ndim}")


def _find_local(data_dir: Path, name: str) -> Path | None:
    """``data_dir/name`` or ``data_dir/name.gz``, whichever exists first, else None."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Where:
    """Which set's split is looked for in which folder (for the messages)."""

    title: str
    data_dir: Path
    split: str


def _find_or_download(where: Where, name: str, spec: FileChecksum,
                      mirrors: Sequence[str] | None, timeout: float) -> Path:
    """The file ``name`` in the data dir, else downloaded from ``mirrors`` (None: downloading is off)."""
    data_dir = where.data_dir
    local = _find_local(data_dir, name)
    if local is not None:
        return local
    if mirrors is None:
        raise MnistUnavailableError(_unavailable_message(
            where, f"{name}(.gz) is not in {data_dir} and downloading is off"))
    return download_first(where, name, spec, mirrors, timeout)


def download_first(where: Where, name: str, spec: FileChecksum, mirrors: Sequence[str],
                   timeout: float, gz: bool = True) -> Path:
    """``name`` (+ ``.gz``) from the first of ``mirrors`` that serves a verified copy, into the
    data dir; DatasetUnavailableError saying what each mirror did where none does."""
    try:
        where.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistUnavailableError(_unavailable_message(
            where, f"cannot create {where.data_dir}: {exc}")) from exc
    remote = f"{name}.gz" if gz else name
    target = where.data_dir / remote
    problems = []
    for base in mirrors:
        url = f"{base}{remote}" if base.endswith("/") else f"{base}/{remote}"
        problem = fetch.download(url, target, spec, timeout)
        if problem is None:
            return target
        problems.append(f"{url}: {problem}")
    raise MnistUnavailableError(_unavailable_message(
        where, f"no mirror served a verified {remote}:\n  " + "\n  ".join(problems)))


def _unavailable_message(where: Where, problem: str) -> str:
    if where.title == "CIFAR-10":
        files = f"{CIFAR10_ARCHIVE} or its cifar-10-batches-bin folder"
    else:
        files = "the four files " + ", ".join(f"{name}.gz" for pair in SPLIT_FILES.values() for name in pair)
        files += "; gzipped or not"
    mirrors = f" (set {MIRRORS_ENV} to comma-separated base URLs to download from another mirror)" \
        if where.title == "MNIST" else ""
    return (f"{where.title} {where.split} split unavailable: {problem}\n"
            f"Put {files} in {where.data_dir}, or pass --data-dir with a folder that holds them"
            f"{mirrors}.")


def default_data_dir(name: str = "mnist") -> Path:
    """Where the named set ``name``'s files are looked for and downloaded to: for MNIST
    $DDPM_DATA_DIR, else (every set) $XDG_CACHE_HOME/ddpm/<name>, else ~/.cache/ddpm/<name>.

    A relative $XDG_CACHE_HOME is ignored, as the XDG Base Directory specification asks.
    """
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit and name == "mnist":
        return Path(explicit).expanduser()
    return user_cache_dir() / name


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ddpm, else ~/.cache/ddpm (a relative $XDG_CACHE_HOME is ignored)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "ddpm"


def training_and_held_out(n: int, limit: int | None = None, holdout: int = 0) -> tuple[slice, slice]:
    """(training rows, held-out rows) of a split of ``n`` images: the last ``holdout`` are kept
    out (``nets.train --holdout``), and training takes the first ``limit`` of the rest (all of
    them when None). Without a holdout the held-out rows are all those training does not use.
    ValueError when nothing is left to train on."""
    if holdout >= n:
        raise ConfigError("holdout", f"{holdout} leaves no training images of the {n} in the split")
    pool = n - holdout
    stop = pool if limit is None else min(limit, pool)
    return slice(0, stop), slice(n - holdout if holdout else stop, n)
