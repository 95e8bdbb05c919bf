"""Result files on disk: written once past the page cache (O_DIRECT) where the file system allows, byte for byte;
spools recycled (or emptied and set aside), never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.store import SPENT_SPOOL_NAME, SPOOL_NAME, SPOOL_POOL, ResultFiles, write_direct


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 - 7])
def test_result_files_hold_exactly_the_bytes_written(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    files = ResultFiles(tmp_path / "results")
    files.write("job1", {"a-1.png": data, "a-2.png": data[::-1]})
    assert files.read("job1", "a-1.png") == data
    assert files.read("job1", "a-2.png") == data[::-1]
    assert sorted(p.name for p in files.folder("job1").iterdir()) == ["a-1.png", "a-2.png"]  # no .part left


def test_a_direct_write_replaces_an_older_file_and_says_when_it_cannot(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    target.write_bytes(b"x" * 100_000)
    data = os.urandom(10_000)
    if write_direct(target, data):
        assert target.read_bytes() == data
    else:  # a file system without O_DIRECT: nothing was written, the caller writes it normally
        assert target.read_bytes() == b"x" * 100_000
    assert write_direct(tmp_path / "small.png", b"tiny") is False  # under one block: not worth it


def test_a_direct_write_where_the_file_system_refuses_falls_back_to_a_normal_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")  # what tmpfs before Linux 6.6 answers
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    data = os.urandom(50_000)
    ResultFiles(tmp_path).write("job2", {"b.png": data})
    assert (tmp_path / "job2" / "b.png").read_bytes() == data


def test_a_spent_spool_is_recycled_then_emptied_and_set_aside_once_the_pool_is_full(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    for number in range(SPOOL_POOL + 1):
        spool = files.spool(f"job{number}")
        spool.parent.mkdir(parents=True)
        spool.write_bytes(b"{" + b"a" * 100_000 + b"}")
        (spool.parent / (SPOOL_NAME + ".part")).write_bytes(b"cut")
        files.discard_spool(f"job{number}")
        assert not spool.exists() and not (spool.parent / (SPOOL_NAME + ".part")).exists()
    assert len(list(files.pool.iterdir())) == SPOOL_POOL  # recycled, whole: to be written over
    last = files.folder(f"job{SPOOL_POOL}")
    assert (last / SPENT_SPOOL_NAME).stat().st_size == 0  # the pool was full: emptied, kept with its job
    files.discard_spool(f"job{SPOOL_POOL}")  # again: nothing to do
    files.delete(f"job{SPOOL_POOL}")
    assert not last.exists()


def test_a_recycled_spool_is_handed_out_once(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    assert files.reuse_spool(tmp_path / "a.part") is False  # nothing recycled yet
    spool = files.spool("job1")
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"x" * 5000)
    files.discard_spool("job1")
    assert files.reuse_spool(tmp_path / "b.part") is True
    assert (tmp_path / "b.part").read_bytes() == b"x" * 5000
    assert files.reuse_spool(tmp_path / "c.part") is False
