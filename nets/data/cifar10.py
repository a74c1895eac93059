"""CIFAR-10 from its binary version: fixed-length records, read without unpickling anything.

Each batch file is records of 1 label byte (0..9) and 3,072 pixel bytes: the 1,024 red values of
the 32 × 32 image row by row, then the green, then the blue. The training split is
``data_batch_1.bin`` .. ``data_batch_5.bin`` (50,000 images), the test split ``test_batch.bin``
(10,000). The files are found in the data directory, in its ``cifar-10-batches-bin`` folder, or
extracted from ``cifar-10-binary.tar.gz`` (downloaded when missing and checked against the MD5 the
authors publish; only the batch files are taken out of it, by name). The Python version of
CIFAR-10 is pickled: it is refused with a pointer to the binary one, never unpickled.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nets.data.catalog import CIFAR10_ARCHIVE, NAMED_SETS
from nets.data.idx import MnistFormatError
from nets.data.mnist import MnistArrays, MnistUnavailableError, Where, default_data_dir, download_first
from nets.files import atomic_file

RECORD_BYTES = 1 + 3 * 32 * 32
BATCH_FOLDER = "cifar-10-batches-bin"
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
PICKLED_SIGNS = ("cifar-10-batches-py", "cifar-10-python.tar.gz", "data_batch_1")


def load_cifar10(data_dir: str | os.PathLike[str] | None, split: str, download: bool = True,
                 base_urls: Sequence[str] | None = None, timeout: float = 60.0) -> MnistArrays:
    """One CIFAR-10 split: images (N, 32, 32, 3) uint8 RGB and labels (N,) uint8 in 0..9, read-only.

    DatasetUnavailableError where the batches are neither here nor downloadable (a pickled copy
    in the folder is named as the reason), MnistFormatError (a ValueError naming the file) for a
    batch whose length is not whole records or whose labels are not 0..9.
    """
    if split not in SPLIT_BATCHES:
        raise ValueError(f"unknown CIFAR-10 split: {split!r} (expected 'train' or 'test')")
    folder = default_data_dir("cifar10") if data_dir is None else Path(data_dir).expanduser()
    where = Where("CIFAR-10", folder, split)
    paths = batch_paths(where, download, base_urls, timeout)
    parts = [read_batch(path) for path in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images.setflags(write=False)
    labels.setflags(write=False)
    return MnistArrays(images=images, labels=labels)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 32, 32, 3), labels (n,)) of one binary batch; MnistFormatError naming it."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise MnistFormatError(path, f"{raw.size:,} bytes is not a whole number of CIFAR-10 records "
                                     f"({RECORD_BYTES:,} bytes each: a label byte and 32×32×3 pixels)")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise MnistFormatError(path, f"record {bad[0]} has label {labels[bad[0]]}; CIFAR-10 labels "
                                     f"are 0..9 (is this CIFAR-100's binary version?)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes → (H, W, RGB)
    return np.ascontiguousarray(images), labels


def batch_paths(where: Where, download: bool, base_urls: Sequence[str] | None,
                timeout: float) -> list[Path]:
    """The split's batch files, found, else extracted from the archive (downloaded if missing)."""
    names = SPLIT_BATCHES[where.split]
    found = find_batches(where.data_dir, names)
    if found is not None:
        return found
    archive = where.data_dir / CIFAR10_ARCHIVE
    if not archive.is_file():
        pickled = [sign for sign in PICKLED_SIGNS if (where.data_dir / sign).exists()]
        if pickled:
            raise MnistUnavailableError(
                f"{where.data_dir / pickled[0]} is CIFAR-10's Python version, which is pickled; this "
                f"package never unpickles data. Download the binary version instead: {BINARY_URL}")
        if not download:
            raise MnistUnavailableError(f"CIFAR-10 {where.split} split unavailable: neither its batch "
                                        f"files nor {CIFAR10_ARCHIVE} are in {where.data_dir} and "
                                        f"downloading is off")
        spec = NAMED_SETS["cifar10"].checksums[CIFAR10_ARCHIVE]
        mirrors = tuple(base_urls) if base_urls is not None else NAMED_SETS["cifar10"].mirrors
        archive = download_first(where, CIFAR10_ARCHIVE, spec, mirrors, timeout, gz=False)
    extract_batches(archive, where.data_dir / BATCH_FOLDER)
    return find_batches(where.data_dir, names) or []


def find_batches(folder: Path, names: tuple[str, ...]) -> list[Path] | None:
    """The batch files ``names`` in ``folder`` or its cifar-10-batches-bin, if all are there."""
    for place in (folder, folder / BATCH_FOLDER):
        paths = [place / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


def extract_batches(archive: Path, out: Path) -> None:
    """The six batch files (and batches.meta.txt) out of ``archive``, by name only: no member's
    path is trusted, each is written atomically. MnistFormatError naming the archive if it is
    unreadable or lacks a batch."""
    wanted = {*SPLIT_BATCHES["train"], *SPLIT_BATCHES["test"], "batches.meta.txt"}
    out.mkdir(parents=True, exist_ok=True)
    taken = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if name not in wanted or not member.isfile():
                    continue
                source = tar.extractfile(member)
                with atomic_file(out / name) as (f, _tmp):
                    while chunk := source.read(1 << 20):
                        f.write(chunk)
                taken.add(name)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise MnistFormatError(archive, f"cannot be read as a .tar.gz ({err})") from None
    missing = sorted(wanted - taken - {"batches.meta.txt"})
    if missing:
        raise MnistFormatError(archive, f"holds no {', '.join(missing)}: not the CIFAR-10 binary archive")
