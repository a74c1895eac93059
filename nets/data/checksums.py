"""What an MNIST file must match (decompressed size, the .gz MD5, the payload SHA-256).

For each file `MNIST_CHECKSUMS` holds
  * ``gz_md5``: the widely published MD5 of the official ``.gz`` (the value the mirrors and
    torchvision list). A download whose bytes match it is accepted.
  * ``size``: the decompressed length, checked for every file, local or downloaded.
  * ``sha256``: the SHA-256 of the decompressed payload. Known only for the test split, measured
    on a recompressed copy (its ``.gz`` MD5 differs from the official one, its payload does not).
    Where known it is checked for every local file, and a download whose ``.gz`` MD5 differs is
    still accepted when its payload matches it (a mirror that recompressed the files).
The payload SHA-256 of the training split could not be measured here (no copy of it on the build
machines and no network), so a local training file is checked for its size and structure only,
and a downloaded one must match the official ``.gz`` MD5. MD5 guards against damage, not
tampering; the payload SHA-256 does both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from nets.data.idx import CHUNK


@dataclass(frozen=True)
class FileChecksum:
    """What a file must match: decompressed ``size`` in bytes, and the hex digests known for it."""

    size: int
    gz_md5: str | None = None  # MD5 of the .gz bytes as the mirrors serve them
    sha256: str | None = None  # SHA-256 of the decompressed file (header + payload)


MNIST_CHECKSUMS: Mapping[str, FileChecksum] = MappingProxyType({
    "train-images-idx3-ubyte": FileChecksum(47_040_016, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": FileChecksum(60_008, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": FileChecksum(
        7_840_016, "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": FileChecksum(
        10_008, "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
})


def integrity_problem(header: bytes, array: np.ndarray, spec: FileChecksum) -> str | None:
    """Why the decompressed file (``header`` + ``array``) does not match ``spec``, or None."""
    size = len(header) + array.nbytes
    if size != spec.size:
        return f"decompressed size {size:,} bytes differs from the expected {spec.size:,}"
    if spec.sha256 is not None:
        digest = hashlib.sha256(header)
        digest.update(np.ascontiguousarray(array).data)
        if digest.hexdigest() != spec.sha256:
            return (f"SHA-256 of the decompressed data {digest.hexdigest()} differs from the "
                    f"expected {spec.sha256}")
    return None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
