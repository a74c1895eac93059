"""Downloading MNIST files from mirrors, verified before they are kept.

Mirrors are tried in order (`mnist_mirrors`: an argument, else $DDPM_MNIST_MIRRORS, else the
defaults). A download streams into a hidden temporary file beside its target through
`nets.files.atomic_file`, is verified against its checksums, and only then renamed into place;
a failed or rejected download leaves nothing behind.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from nets.data.checksums import FileChecksum, file_md5, integrity_problem
from nets.data.idx import CHUNK, MnistFormatError, read_idx_with_header
from nets.files import atomic_file

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV = "DDPM_MNIST_MIRRORS"  # comma-separated base URLs, tried in order
DOWNLOAD_SUFFIX = ".part"  # of the temporary file a download streams into
_USER_AGENT = "ddpm-mnist/0.1 (Python urllib)"


class _Rejected(Exception):
    """A download that did not verify; its message says why."""


def mnist_mirrors(base_urls: Sequence[str] | None = None) -> tuple[str, ...]:
    """Mirror base URLs in the order tried: ``base_urls``, else $DDPM_MNIST_MIRRORS, else defaults.

    The environment variable is comma-separated; blank entries are dropped.
    """
    if base_urls is not None:
        return tuple(base_urls)
    from_env = tuple(u.strip() for u in os.environ.get(MIRRORS_ENV, "").split(",") if u.strip())
    return from_env or DEFAULT_MIRRORS


def download(url: str, target: Path, spec: FileChecksum, timeout: float) -> str | None:
    """Fetch ``url`` to ``target`` if it verifies against ``spec`` (None), else say why not.

    The bytes stream into a hidden temporary file beside ``target`` (`nets.files.atomic_file`),
    are verified there and only then renamed over ``target``; on every other outcome the
    temporary file is removed.
    """
    try:
        with atomic_file(target, suffix=DOWNLOAD_SUFFIX) as (out, tmp):
            # A gzip of incompressible data is at most ~0.03% larger than the data.
            problem = _fetch(url, out, limit=spec.size + spec.size // 64 + 65_536, timeout=timeout)
            out.flush()
            problem = problem or _download_problem(tmp, spec)
            if problem is not None:
                raise _Rejected(problem)
    except _Rejected as rejected:
        return str(rejected)
    return None


def _fetch(url: str, out: BinaryIO, limit: int, timeout: float) -> str | None:
    """Stream ``url`` into ``out`` (at most ``limit`` bytes); None on success, else why not."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(CHUNK):
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
        md5 = file_md5(path)
        if md5 == spec.gz_md5:
            return None
        if spec.sha256 is None:
            return f"MD5 {md5} differs from the official {spec.gz_md5}"
    elif spec.sha256 is None:
        return "no checksum to verify it against"
    try:
        header, array = read_idx_with_header(path, spec.size)
    except MnistFormatError as exc:
        return exc.problem
    return integrity_problem(header, array, spec)
