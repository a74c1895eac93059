"""Files that survive a crash: every writer in the package goes through :func:`atomic_file`.

The bytes go to a hidden temporary file beside the target (``.<name>.XXXX<suffix>``), are
fsynced, and renamed over the target with ``os.replace`` (atomic on POSIX); then the directory
is fsynced so that the rename itself survives a power cut. A crash at any moment leaves either
the old file or the new one, never a torn one; a write that fails leaves nothing behind. A
process killed mid-write (``kill -9``) leaves its temporary file: :func:`remove_stale_temp_files`
clears those at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

TEMP_SUFFIX = ".tmp"
# fsync of a directory is refused by some file systems (network, FUSE, Windows): the rename has
# happened and cannot be made more durable there, so those errors are not a failed write.
_DIRECTORY_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES,
                                errno.EPERM, errno.EISDIR, errno.EBADF}


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = TEMP_SUFFIX) -> Iterator[tuple[BinaryIO, Path]]:
    """``with atomic_file(path) as (f, tmp):`` write to ``f`` (binary; ``tmp`` is its path, for a
    check that reads the bytes back); on a clean exit the file replaces ``path``; on an
    exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make every file private
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` through :func:`atomic_file`; returns ``path``."""
    with atomic_file(path) as (f, _):
        write(f)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, value: object) -> Path:
    """``value`` as indented JSON (one trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(value, indent=1) + "\n")


def save_npz_atomic(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` to ``path`` atomically: never a torn .npz."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable. OSError on a real I/O failure; nothing where the
    file system does not fsync directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as err:
        if err.errno in _DIRECTORY_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _DIRECTORY_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def temp_files_of(path: str | os.PathLike, suffix: str = TEMP_SUFFIX) -> list[Path]:
    """The temporary files that :func:`atomic_file` of ``path`` leaves behind when the process is
    killed mid-write (``kill -9``, power loss): ``.<name>.XXXX<suffix>`` beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{suffix}"))


def remove_stale_temp_files(paths: list[Path]) -> list[Path]:
    """Delete the orphaned temporary files of ``paths``; call it only while nothing writes them
    (a run's start). Returns what was removed."""
    removed = []
    for tmp in (t for p in paths for t in temp_files_of(p)):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
