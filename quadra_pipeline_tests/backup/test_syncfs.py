"""The one flush of a backup: `syncfs` failing (EIO: the disk lost writes) fails the backup, and
nothing names its chunks; only a kernel or libc without syncfs falls back to `sync()`."""

from __future__ import annotations

import ctypes
import errno

import pytest

from quadra_pipeline.backup import BackupError
from quadra_pipeline.backup import _fs
from quadra_pipeline_tests.backup.repository_helpers import tree, write_tree


class FakeLibc:
    def __init__(self, error: int | None, missing: bool = False) -> None:
        self.error, self.calls = error, 0
        if missing:
            self.syncfs = None

    def syncfs(self, fd: int) -> int:  # noqa: D401 - a stand-in for libc's
        self.calls += 1
        if self.error is None:
            return 0
        ctypes.set_errno(self.error)
        return -1


def fake(monkeypatch, libc: FakeLibc) -> list[str]:
    synced: list[str] = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: libc)
    monkeypatch.setattr(_fs.os, "sync", lambda: synced.append("sync"))
    return synced


def test_a_failed_syncfs_fails_the_backup_and_leaves_nothing(repo, tmp_path, monkeypatch):
    libc = FakeLibc(errno.EIO)
    synced = fake(monkeypatch, libc)
    files = write_tree(tmp_path / "src", tree())
    with pytest.raises(BackupError) as caught:
        repo.create(files, sources={})
    message = str(caught.value)
    assert "syncfs" in message and "Input/output error" in message and "no backup was made" in message
    assert libc.calls == 1 and synced == []  # not papered over by sync(), which reports nothing
    assert repo.backup_ids() == [] and not list(repo.chunks.iter_stored())  # its chunks removed
    monkeypatch.undo()
    assert repo.create(files, sources={}).manifest.backup_id in repo.backup_ids()  # the next run writes them again


@pytest.mark.parametrize("libc", [FakeLibc(errno.ENOSYS), FakeLibc(None, missing=True)], ids=["ENOSYS", "no-syncfs-in-libc"])
def test_without_syncfs_it_falls_back_to_sync(repo, tmp_path, monkeypatch, libc):
    synced = fake(monkeypatch, libc)
    _fs.sync_fs(tmp_path)
    assert synced == ["sync"]


def test_a_working_syncfs_is_all_it_takes(tmp_path, monkeypatch):
    libc = FakeLibc(None)
    synced = fake(monkeypatch, libc)
    _fs.sync_fs(tmp_path)
    assert libc.calls == 1 and synced == []
