"""A full disk during backup and restore: a clear error, nothing lost, nothing half-written."""

from __future__ import annotations

import os
import shutil

import pytest

from quadra_pipeline.backup import BackupError, BackupRepository, _fs

from .repository_helpers import (
    SIGNING,
    assert_untouched,
    fill_disk,
    read_tree,
    write_tree,
)


def _tree_listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != "filler")


def test_backup_on_a_full_disk_fails_cleanly_and_the_next_one_succeeds(small_disk, tmp_path):
    repo = BackupRepository(small_disk / "repo", keys=SIGNING, require_signature=True)
    small = write_tree(tmp_path / "small", {"a.txt": b"a" * 5000, "b.txt": b"b" * 7000})
    first = repo.create(small, sources={}).manifest.backup_id
    before = _tree_listing(repo.root)
    big = write_tree(tmp_path / "big", {"big.bin": os.urandom(3 << 20), "a.txt": b"a" * 5000})
    with pytest.raises(BackupError) as caught:
        repo.create(big, sources={})
    message = str(caught.value)
    assert message.startswith(f"{repo.root}: cannot write backup ")
    assert "No space left on device" in message and message.endswith("no backup was made")
    assert "\n" not in message
    assert_untouched(repo, [first])
    assert _tree_listing(repo.root) == before  # the objects it had added are gone again
    second = repo.create(small, sources={}).manifest.backup_id
    assert_untouched(repo, [first, second])


def test_disk_full_at_every_stage_of_a_backup(small_disk, tmp_path, monkeypatch):
    """With 0, 1, 2... free pages the disk runs out while writing the first file's chunk, the
    second's, the file list, the sidecar, the manifest, the head; each time the error is clear and
    the repository as it was."""
    failed_after: list[tuple[str, ...]] = []
    for free_pages in range(0, 8):
        events: list[str] = []
        monkeypatch.setattr(_fs, "hook", lambda event, **info: events.append(event))
        repo = BackupRepository(small_disk / f"repo{free_pages}", keys=SIGNING, require_signature=True)
        first = repo.create(write_tree(tmp_path / "s1", {"a.txt": b"first"}), sources={}).manifest.backup_id
        before = _tree_listing(repo.root)
        filler = fill_disk(small_disk, leave_pages=free_pages)
        sources = write_tree(tmp_path / "s2", {"a.txt": b"second", "b.txt": b"x" * 5000})
        events.clear()
        try:
            result = repo.create(sources, sources={"note": "x" * 100})
        except BackupError as exc:
            assert "No space left on device" in str(exc) and str(exc).endswith("no backup was made")
            failed_after.append(tuple(events))
            assert_untouched(repo, [first])
            assert _tree_listing(repo.root) == before
        else:
            assert_untouched(repo, [first, result.manifest.backup_id])
        filler.unlink()
        again = repo.create(sources, sources={})
        assert repo.verify(again.manifest.backup_id).ok
        shutil.rmtree(repo.root)
    # The disk ran out at each stage: before the first file was stored, after it, after the file
    # list, after the sidecar.
    assert () in failed_after
    assert ("object",) in failed_after or ("object", "object") in failed_after
    stages = ("object", "object", "file-list", "sidecar")
    assert {stages[:3], stages} <= set(failed_after), failed_after


def test_restore_onto_a_full_disk_writes_nothing(small_disk, tmp_path):
    repo = BackupRepository(tmp_path / "repo", keys=SIGNING)
    files = {"big.bin": os.urandom(3 << 20), "small.txt": b"s"}
    backup_id = repo.create(write_tree(tmp_path / "src", files), sources={}).manifest.backup_id
    target = small_disk / "restored"
    with pytest.raises(BackupError) as caught:
        repo.restore(backup_id, target)
    assert str(caught.value) == f"{target}: cannot restore backup {backup_id}: No space left on device; nothing was written"
    assert os.listdir(small_disk) == []
    assert os.listdir(repo.staging_dir) == []
    assert_untouched(repo, [backup_id])
    repo.restore(backup_id, tmp_path / "roomy")
    assert read_tree(tmp_path / "roomy") == files
