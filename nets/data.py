"""MNIST on disk: the IDX reader, integrity checks, mirror downloads, and the uint8 <-> torch step.

Files. MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0) is four IDX files, gzipped on the mirrors:

    name                      array                     decompressed bytes
    train-images-idx3-ubyte   (60000, 28, 28) uint8     47,040,016
    train-labels-idx1-ubyte   (60000,) uint8 in 0..9        60,008
    t10k-images-idx3-ubyte    (10000, 28, 28) uint8      7,840,016
    t10k-labels-idx1-ubyte    (10000,) uint8 in 0..9        10,008

`load_mnist` looks for each file in the data directory under its plain name or with ``.gz``
(gzip is recognised by its magic bytes, never by the name) and downloads the missing ones from
the first mirror that serves a verified copy.

IDX format: a big-endian header (two zero bytes, a data-type code, the number of dimensions,
then one uint32 size per dimension) followed by the row-major payload. Images carry the magic
number 0x00000803 (unsigned byte, 3 dimensions), labels 0x00000801 (unsigned byte, 1 dimension).
Only the unsigned-byte type (code 0x08) is read; every other type is a `MnistFormatError`.

Integrity (`MNIST_CHECKSUMS`). For each file the table holds
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

Downloads stream into a hidden temporary file in the data directory, are verified, fsynced and
renamed into place with `os.replace`; a failed or rejected download leaves nothing behind.

Pixels: uint8 0 = black (background), 255 = white (ink). The network sees float32 x/127.5 - 1 in
[-1, 1] (`to_training_tensor`); `images_to_uint8` maps samples back.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Literal

import numpy as np
import torch

Split = Literal["train", "test"]

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV = "DDPM_MNIST_MIRRORS"  # comma-separated base URLs, tried in order
DATA_DIR_ENV = "DDPM_DATA_DIR"
IMAGE_SIZE = 28
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)  # (C, H, W) as the networks see one digit
NUM_CLASSES = 10  # digits 0-9; a conditional U-Net's label index NUM_CLASSES means "no label"
MAX_PAYLOAD_BYTES = 1 << 30  # no IDX file read here may declare more (a gzip-bomb guard)

_GZIP_MAGIC = b"\x1f\x8b"
_UNSIGNED_BYTE = 0x08
_CHUNK = 1 << 18
_USER_AGENT = "ddpm-mnist/0.1 (Python urllib)"


class MnistFormatError(ValueError):
    """A file is not a well-formed MNIST IDX file or fails its checksum.

    ``str(error)`` is ``"<path>: <problem>"``; ``error.path`` and ``error.problem`` hold the parts.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(os.fspath(path), problem)

    @property
    def path(self) -> str:
        return self.args[0]

    @property
    def problem(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class MnistUnavailableError(RuntimeError):
    """The MNIST files are not in the data directory and no mirror served a verified copy."""


MNIST_ERRORS = (MnistUnavailableError, MnistFormatError)  # what `load_mnist` raises for bad data


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


# ---------------------------------------------------------------------------------------------
# IDX reading


def read_idx(path: str | os.PathLike[str], *, max_payload_bytes: int = MAX_PAYLOAD_BYTES
             ) -> np.ndarray:
    """Read an unsigned-byte IDX file, raw or gzipped, into a uint8 array of the header's shape.

    The header's declared size is checked against the file before the payload is read (raw) or
    while it is decompressed, never reading more than the declared size + 1 bytes (gzip), so a
    lying header cannot make this allocate more than the file really holds. Any malformed
    content raises `MnistFormatError`; an unreadable path raises the usual `OSError`.
    """
    return _read_idx(Path(path), max_payload_bytes)[1]


def _read_idx(path: Path, max_payload_bytes: int) -> tuple[bytes, np.ndarray]:
    """(header bytes, payload array) of an IDX file; see `read_idx`."""
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if not is_gzip:
            return _parse_idx(f, path, os.fstat(f.fileno()).st_size, max_payload_bytes)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                try:
                    return _parse_idx(stream, path, None, max_payload_bytes)
                except MnistFormatError:
                    # Damaged deflate data often decodes to a nonsense header first: when the
                    # rest of the stream is corrupt too, report that, the cause, instead.
                    _drain(stream, max_payload_bytes + 1)
                    raise
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise MnistFormatError(path, f"corrupt gzip data ({exc})") from exc


def _parse_idx(stream: BinaryIO, path: Path, total_size: int | None, max_payload_bytes: int
               ) -> tuple[bytes, np.ndarray]:
    """Parse an IDX stream; ``total_size`` is the stream's length when known (raw files)."""
    magic = _read_upto(stream, 4)
    if len(magic) < 4:
        raise MnistFormatError(path, f"file ends inside the 4-byte IDX magic number "
                                     f"({len(magic)} bytes)")
    magic_hex = f"0x{int.from_bytes(magic, 'big'):08X}"
    if magic[:2] != b"\0\0":
        raise MnistFormatError(path, f"bad magic number {magic_hex}: not an IDX file (expected "
                                     f"0x00000803 for images, 0x00000801 for labels)")
    code, ndim = magic[2], magic[3]
    if code != _UNSIGNED_BYTE:
        raise MnistFormatError(path, f"magic number {magic_hex} declares data type 0x{code:02X}; "
                                     f"only 0x08 (unsigned byte) is supported")
    if ndim == 0:
        raise MnistFormatError(path, f"magic number {magic_hex} declares 0 dimensions")
    dims = _read_upto(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise MnistFormatError(path, f"file ends inside the header: {ndim} dimension sizes need "
                                     f"{4 * ndim} bytes, found {len(dims)}")
    header = bytes(magic) + bytes(dims)
    shape = struct.unpack(f">{ndim}I", dims)
    declared = math.prod(shape)
    described = f"{' x '.join(map(str, shape))} = {declared:,} bytes of data"
    if declared > max_payload_bytes:
        raise MnistFormatError(path, f"header declares {described}, more than the "
                                     f"{max_payload_bytes:,} allowed")
    if total_size is not None and total_size - len(header) != declared:
        raise _size_mismatch(path, described, declared, total_size - len(header))
    data = _read_upto(stream, declared + 1)
    if len(data) != declared:
        raise _size_mismatch(path, described, declared,
                             len(data) if len(data) < declared else None)
    return header, np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _size_mismatch(path: Path, described: str, declared: int, found: int | None
                   ) -> MnistFormatError:
    """The error for ``found`` payload bytes (None: an unknown number more) against ``declared``."""
    if found is not None and found < declared:
        return MnistFormatError(path, f"truncated: header declares {described}, "
                                      f"the file holds only {found:,}")
    held = "more" if found is None else f"{found:,}"
    return MnistFormatError(path, f"too long: header declares {described}, the file holds {held}")


def _drain(stream: BinaryIO, limit: int) -> None:
    """Read and discard at most ``limit`` bytes in bounded chunks."""
    left = limit
    while left > 0 and (chunk := stream.read(min(_CHUNK, left))):
        left -= len(chunk)


def _read_upto(stream: BinaryIO, limit: int) -> bytearray:
    """Read at most ``limit`` bytes in bounded chunks (``read(n)`` may pre-allocate n bytes)."""
    data = bytearray()
    while len(data) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------
# Loading a split


def load_mnist(data_dir: str | os.PathLike[str] | None, split: Split, download: bool = True,
               base_urls: Sequence[str] | None = None, *,
               checksums: Mapping[str, FileChecksum] | None = None,
               timeout: float = 30.0) -> MnistArrays:
    """Load one MNIST split from ``data_dir`` (None: `default_data_dir()`), downloading if needed.

    Files are found as ``<name>`` or ``<name>.gz``; missing ones are downloaded when ``download``
    from ``base_urls`` (default: `mnist_mirrors()`), each HTTP read bounded by ``timeout``
    seconds. ``checksums`` replaces `MNIST_CHECKSUMS` (tests, private data); it must hold the
    split's two file names. Returns read-only arrays: images (N, 28, 28) uint8, labels (N,) uint8.

    Raises `MnistUnavailableError` when a file is missing and cannot be downloaded, and
    `MnistFormatError` (naming the file) when a file is malformed or fails its checksum.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown MNIST split: {split!r} (expected 'train' or 'test')")
    data_dir = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    table = MNIST_CHECKSUMS if checksums is None else checksums
    images_name, labels_name = SPLIT_FILES[split]
    specs = [_checksum_for(table, name) for name in (images_name, labels_name)]
    paths = [_find_or_download(data_dir, split, name, spec, download, base_urls, timeout)
             for name, spec in zip((images_name, labels_name), specs, strict=True)]
    (images_path, labels_path), (images_spec, labels_spec) = paths, specs

    images_header, images = _read_idx(images_path, images_spec.size)
    labels_header, labels = _read_idx(labels_path, labels_spec.size)
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
        problem = _integrity_problem(header, array, spec)
        if problem is not None:
            raise MnistFormatError(path, f"{problem}; the file is damaged or not the official "
                                         f"MNIST file: delete it to download it again")
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


def _integrity_problem(header: bytes, array: np.ndarray, spec: FileChecksum) -> str | None:
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


def _find_local(data_dir: Path, name: str) -> Path | None:
    """``data_dir/name`` or ``data_dir/name.gz``, whichever exists first, else None."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_or_download(data_dir: Path, split: str, name: str, spec: FileChecksum, download: bool,
                      base_urls: Sequence[str] | None, timeout: float) -> Path:
    local = _find_local(data_dir, name)
    if local is not None:
        return local
    if not download:
        raise MnistUnavailableError(_unavailable_message(
            data_dir, split, f"{name}(.gz) is not in {data_dir} and downloading is off"))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistUnavailableError(_unavailable_message(
            data_dir, split, f"cannot create {data_dir}: {exc}")) from exc
    target = data_dir / f"{name}.gz"
    problems = []
    for base in mnist_mirrors(base_urls):
        url = f"{base}{name}.gz" if base.endswith("/") else f"{base}/{name}.gz"
        problem = _download(url, target, spec, timeout)
        if problem is None:
            return target
        problems.append(f"{url}: {problem}")
    raise MnistUnavailableError(_unavailable_message(
        data_dir, split, f"no mirror served a verified {name}.gz:\n  " + "\n  ".join(problems)))


def _unavailable_message(data_dir: Path, split: str, problem: str) -> str:
    files = ", ".join(f"{name}.gz" for pair in SPLIT_FILES.values() for name in pair)
    return (f"MNIST {split} split unavailable: {problem}\n"
            f"Put the four MNIST files ({files}; gzipped or not) in {data_dir}, or pass "
            f"--data-dir with a folder that holds them (set {MIRRORS_ENV} to comma-separated "
            f"base URLs to download from another mirror).")


# ---------------------------------------------------------------------------------------------
# Downloading


def mnist_mirrors(base_urls: Sequence[str] | None = None) -> tuple[str, ...]:
    """Mirror base URLs in the order tried: ``base_urls``, else $DDPM_MNIST_MIRRORS, else defaults.

    The environment variable is comma-separated; blank entries are dropped.
    """
    if base_urls is not None:
        return tuple(base_urls)
    from_env = tuple(u.strip() for u in os.environ.get(MIRRORS_ENV, "").split(",") if u.strip())
    return from_env or DEFAULT_MIRRORS


def _download(url: str, target: Path, spec: FileChecksum, timeout: float) -> str | None:
    """Fetch ``url`` to ``target`` atomically if it verifies against ``spec``; else say why not.

    The bytes go to a hidden temporary file beside ``target``, are fsynced and verified, then
    renamed over ``target``; the temporary file is removed on every other outcome.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp, renamed = Path(tmp_name), False
    try:
        with os.fdopen(fd, "wb") as out:
            # A gzip of incompressible data is at most ~0.03% larger than the data.
            problem = _fetch(url, out, limit=spec.size + spec.size // 64 + 65_536,
                             timeout=timeout)
            out.flush()
            os.fsync(out.fileno())
        if problem is None:
            problem = _download_problem(tmp, spec)
        if problem is None:
            os.replace(tmp, target)
            renamed = True
            _fsync_dir(target.parent)
        return problem
    finally:
        if not renamed:
            tmp.unlink(missing_ok=True)


def _fetch(url: str, out: BinaryIO, limit: int, timeout: float) -> str | None:
    """Stream ``url`` into ``out`` (at most ``limit`` bytes); None on success, else why not."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > limit:
                    return f"more than {limit:,} bytes, too large for this file"
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot connect ({exc.reason})"
    except TimeoutError:
        return f"no data for {timeout:g} s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if length is not None and length.isdigit() and received != int(length):
        return f"truncated: received {received:,} of {int(length):,} bytes"
    return None


def _download_problem(path: Path, spec: FileChecksum) -> str | None:
    """Why the downloaded .gz at ``path`` fails ``spec`` (see the module docstring), or None."""
    if spec.gz_md5 is not None:
        md5 = _file_md5(path)
        if md5 == spec.gz_md5:
            return None
        if spec.sha256 is None:
            return f"MD5 {md5} differs from the official {spec.gz_md5}"
    elif spec.sha256 is None:
        return "no checksum to verify it against"
    try:
        header, array = _read_idx(path, spec.size)
    except MnistFormatError as exc:
        return exc.problem
    return _integrity_problem(header, array, spec)


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot open)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_data_dir() -> Path:
    """$DDPM_DATA_DIR, else $XDG_CACHE_HOME/ddpm/mnist, else ~/.cache/ddpm/mnist.

    A relative $XDG_CACHE_HOME is ignored, as the XDG Base Directory specification asks.
    """
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_dir() / "mnist"


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ddpm, else ~/.cache/ddpm (a relative $XDG_CACHE_HOME is ignored)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "ddpm"


# ---------------------------------------------------------------------------------------------
# Which images train a model, and which it never sees


def training_and_held_out(n: int, limit: int | None = None, holdout: int = 0) -> tuple[slice, slice]:
    """(training rows, held-out rows) of a split of ``n`` images: the last ``holdout`` are kept
    out (``nets.train --holdout``), and training takes the first ``limit`` of the rest (all of
    them when None). Without a holdout the held-out rows are all those training does not use.
    ValueError when nothing is left to train on."""
    if holdout >= n:
        raise ValueError(f"--holdout {holdout} leaves no training images of the {n} in the split")
    pool = n - holdout
    stop = pool if limit is None else min(limit, pool)
    return slice(0, stop), slice(n - holdout if holdout else stop, n)


# ---------------------------------------------------------------------------------------------
# uint8 <-> the network's [-1, 1]


def to_training_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 x/127.5 - 1 in [-1, 1], on ``device``.

    The uint8 array crosses to the device once (a quarter of the float32 bytes) and is scaled
    there, so the trainer can index batches without further copies.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device)  # (N, H, W) uint8
    return x.unsqueeze(1).to(torch.float32).div_(127.5).sub_(1.0)  # (N, 1, H, W)


def images_to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] images (N, 1, H, W) or (N, H, W) -> (N, H, W) uint8, 0 = black, 255 = white.

    Computes round((x + 1) * 127.5) in float64 and clips to 0..255; NaN maps to 0. Exactly
    inverts `to_training_tensor` on every uint8 value.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, H, W), got {x.shape}")
    pixels = np.rint((np.nan_to_num(x, nan=-1.0) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)
