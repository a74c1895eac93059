"""The IDX file format MNIST ships in: a reader that never trusts the header.

IDX format: a big-endian header (two zero bytes, a data-type code, the number of dimensions,
then one uint32 size per dimension) followed by the row-major payload. Images carry the magic
number 0x00000803 (unsigned byte, 3 dimensions), labels 0x00000801 (unsigned byte, 1 dimension).
Only the unsigned-byte type (code 0x08) is read; every other type is a `MnistFormatError`. Files
may be gzipped: gzip is recognised by its magic bytes, never by the name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_PAYLOAD_BYTES = 1 << 30  # no IDX file read here may declare more (a gzip-bomb guard)
CHUNK = 1 << 18

_GZIP_MAGIC = b"\x1f\x8b"
_UNSIGNED_BYTE = 0x08


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


def read_idx(path: str | os.PathLike[str], *, max_payload_bytes: int = MAX_PAYLOAD_BYTES
             ) -> np.ndarray:
    """Read an unsigned-byte IDX file, raw or gzipped, into a uint8 array of the header's shape.

    The header's declared size is checked against the file before the payload is read (raw) or
    while it is decompressed, never reading more than the declared size + 1 bytes (gzip), so a
    lying header cannot make this allocate more than the file really holds. Any malformed
    content raises `MnistFormatError`; an unreadable path raises the usual `OSError`.
    """
    return read_idx_with_header(Path(path), max_payload_bytes)[1]


def read_idx_with_header(path: Path, max_payload_bytes: int) -> tuple[bytes, np.ndarray]:
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
    while left > 0 and (chunk := stream.read(min(CHUNK, left))):
        left -= len(chunk)


def _read_upto(stream: BinaryIO, limit: int) -> bytearray:
    """Read at most ``limit`` bytes in bounded chunks (``read(n)`` may pre-allocate n bytes)."""
    data = bytearray()
    while len(data) < limit:
        chunk = stream.read(min(CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data
