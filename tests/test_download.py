"""nets.data downloads against a real HTTP server on 127.0.0.1 serving small synthetic MNIST files.

Each mirror is a path prefix on one server: /good/ serves the files, /corrupt/ flips bytes,
/truncated/ announces the full length and stops halfway, /recompressed/ serves the same payload
gzipped differently, /huge/ streams far more than any MNIST file, /missing/ answers 404.
"""

import gzip
import hashlib
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from nets.data import FileChecksum, MnistUnavailableError, load_mnist

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
ALL_FOUR = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

_rng = np.random.default_rng(0)
SPLIT = {IMAGES: _rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
         LABELS: np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)}


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


RAW = {name: _idx(array) for name, array in SPLIT.items()}
GOOD = {name: gzip.compress(raw, compresslevel=9, mtime=0) for name, raw in RAW.items()}
# What a caller who knows these files would pass: .gz MD5, decompressed size and SHA-256.
CHECKSUMS = {name: FileChecksum(len(RAW[name]), hashlib.md5(GOOD[name]).hexdigest(),
                                hashlib.sha256(RAW[name]).hexdigest()) for name in RAW}


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 8]) + data[middle + 8:]


class _Mirrors(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server name)
        mode, _, filename = self.path.strip("/").partition("/")
        name = filename.removesuffix(".gz")
        if mode == "missing" or name not in GOOD or not filename.endswith(".gz"):
            self.send_error(404)
            return
        body = {"good": GOOD[name], "corrupt": _flip(GOOD[name]), "truncated": GOOD[name],
                "recompressed": gzip.compress(RAW[name], compresslevel=1, mtime=123456789),
                "huge": bytes(4 * 2**20)}[mode]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on an oversized body

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Mirrors)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "cache" / "mnist"  # not there yet: load_mnist creates it


def _load(data_dir, mirrors, **kwargs):
    kwargs.setdefault("checksums", CHECKSUMS)
    return load_mnist(data_dir, "test", base_urls=mirrors, timeout=5.0, **kwargs)


def _assert_good_split(split, data_dir):
    np.testing.assert_array_equal(split.images, SPLIT[IMAGES])
    np.testing.assert_array_equal(split.labels, SPLIT[LABELS])
    assert sorted(os.listdir(data_dir)) == [f"{IMAGES}.gz", f"{LABELS}.gz"]  # no temp files


def test_a_good_mirror_downloads_the_split_into_a_new_directory(server, data_dir):
    split = _load(data_dir, [f"{server}/good/"])
    _assert_good_split(split, data_dir)
    assert (data_dir / f"{IMAGES}.gz").read_bytes() == GOOD[IMAGES]


@pytest.mark.parametrize("first", ["corrupt", "truncated", "missing", "huge"])
def test_a_bad_first_mirror_falls_through_to_a_good_second(server, data_dir, first):
    split = _load(data_dir, [f"{server}/{first}/", f"{server}/good"])  # with and without "/"
    _assert_good_split(split, data_dir)


def test_all_mirrors_bad_raises_naming_the_four_files_and_the_data_dir_flag(server, data_dir):
    mirrors = [f"{server}/{mode}/" for mode in ("corrupt", "truncated", "missing", "huge")]
    with pytest.raises(MnistUnavailableError) as info:
        _load(data_dir, mirrors)
    message = str(info.value)
    assert all(name in message for name in ALL_FOUR)
    assert str(data_dir) in message and "--data-dir" in message
    assert all(mirror in message for mirror in mirrors)
    assert "HTTP 404" in message and "truncated" in message and "MD5" not in message
    assert os.listdir(data_dir) == []  # nothing partial left behind


def test_without_a_payload_checksum_only_the_official_gz_bytes_are_accepted(server, data_dir):
    md5_only = {name: FileChecksum(spec.size, spec.gz_md5) for name, spec in CHECKSUMS.items()}
    with pytest.raises(MnistUnavailableError, match=r"MD5 [0-9a-f]{32} differs from the offic"):
        _load(data_dir, [f"{server}/recompressed/"], checksums=md5_only)
    assert os.listdir(data_dir) == []
    _assert_good_split(_load(data_dir, [f"{server}/good/"], checksums=md5_only), data_dir)


def test_a_recompressed_mirror_is_accepted_by_its_payload_sha256(server, data_dir):
    split = _load(data_dir, [f"{server}/recompressed/"])
    np.testing.assert_array_equal(split.images, SPLIT[IMAGES])
    assert (data_dir / f"{IMAGES}.gz").read_bytes() != GOOD[IMAGES]


def test_an_unreachable_mirror_is_skipped_quickly(server, data_dir):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    start = time.perf_counter()
    split = _load(data_dir, [closed, f"{server}/good/"])
    assert time.perf_counter() - start < 3.0
    _assert_good_split(split, data_dir)


def test_a_silent_mirror_times_out_and_is_skipped(server, data_dir):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.perf_counter()
        split = load_mnist(data_dir, "test", base_urls=[
            f"http://127.0.0.1:{silent.getsockname()[1]}/", f"{server}/good/"],
            checksums=CHECKSUMS, timeout=0.3)
    assert time.perf_counter() - start < 3.0
    _assert_good_split(split, data_dir)


def test_mirrors_come_from_the_environment_variable(server, data_dir, monkeypatch):
    monkeypatch.setenv("DDPM_MNIST_MIRRORS", f"{server}/missing/, {server}/good/")
    split = load_mnist(data_dir, "test", checksums=CHECKSUMS, timeout=5.0)
    _assert_good_split(split, data_dir)


def test_files_already_present_are_not_downloaded_again(server, data_dir):
    _load(data_dir, [f"{server}/good/"])
    before = {name: (data_dir / name).stat().st_mtime_ns for name in os.listdir(data_dir)}
    _assert_good_split(_load(data_dir, [f"{server}/missing/"]), data_dir)
    assert {name: (data_dir / name).stat().st_mtime_ns for name in before} == before


def test_download_false_with_missing_files_raises_without_creating_anything(data_dir):
    with pytest.raises(MnistUnavailableError, match="downloading is off") as info:
        load_mnist(data_dir, "train", download=False)
    assert all(name in str(info.value) for name in ALL_FOUR) and "--data-dir" in str(info.value)
    assert not data_dir.exists()
