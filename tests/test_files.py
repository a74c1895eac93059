"""nets.files: the one atomic writer every file of the package goes through."""

import errno
import os

import numpy as np
import pytest

from nets import files


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    files.write_json_atomic(target, {"a": 1})
    files.write_json_atomic(target, {"a": 2})
    assert target.read_text() == '{\n "a": 2\n}\n'
    assert files.temp_files_of(target) == []


def test_a_write_that_fails_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new, half written")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert files.temp_files_of(target) == []


def test_atomic_file_lets_the_body_read_its_temp_file_and_reject_it(tmp_path):
    target = tmp_path / "download.gz"
    with pytest.raises(ValueError, match="rejected"), files.atomic_file(target, ".part") as (f, tmp):
        f.write(b"bytes")
        f.flush()
        assert tmp.read_bytes() == b"bytes" and tmp.suffix == ".part"
        raise ValueError("rejected")
    assert not target.exists() and files.temp_files_of(target, ".part") == []


def test_save_npz_atomic_round_trips_arrays(tmp_path):
    path = files.save_npz_atomic(tmp_path / "a.npz", images=np.arange(6, dtype=np.uint8))
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["images"], np.arange(6, dtype=np.uint8))


def test_remove_stale_temp_files_removes_only_the_orphans_of_the_named_files(tmp_path):
    target, other = tmp_path / "checkpoint.pt", tmp_path / "keep.pt"
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"
    unrelated = tmp_path / ".keep.pt.abc123.tmp"
    for p in (orphan, unrelated):
        p.write_bytes(b"torn")
    assert files.remove_stale_temp_files([target]) == [orphan]
    assert not orphan.exists() and unrelated.exists() and not other.exists()


@pytest.mark.parametrize("code, raises", [(errno.EINVAL, False), (errno.EIO, True)])
def test_fsync_dir_ignores_file_systems_without_directory_fsync_but_not_io_errors(tmp_path, monkeypatch,
                                                                                  code, raises):
    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", refuse)
    if raises:
        with pytest.raises(OSError):
            files.fsync_dir(tmp_path)
    else:
        files.fsync_dir(tmp_path)


def test_files_get_the_permissions_of_a_plain_open_not_mkstemps_private_0600(tmp_path):
    mask = os.umask(0o022)
    try:
        path = files.write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
