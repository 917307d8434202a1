"""Format-2 backups (whole-file objects, HMAC-signed manifests) in a repository that now writes
format 3: still listed, verified, restored, exported and imported, kept by gc, prunable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quadra_pipeline.backup import BackupRepository, IntegrityError

from .repository_helpers import (
    KEY,
    SIGNING,
    read_tree,
    tree,
    write_format2_backup,
    write_tree,
)

WHEN = datetime(2026, 11, 29, 10, tzinfo=UTC)


@pytest.fixture
def mixed(tmp_path):
    """A repository with two format-2 backups (as the previous release wrote them), then a format-3 one."""
    root = tmp_path / "repo"
    old = [write_format2_backup(root, tree(seed), KEY, f"20261129T1{seed}0000Z-0000000{seed}", WHEN.replace(hour=10 + seed))
           for seed in (0, 1)]
    repo = BackupRepository(root, keys=SIGNING, hmac_key=KEY, require_signature=True)
    new = repo.create(write_tree(tmp_path / "src", tree(0)), sources={}).manifest.backup_id
    return repo, old, new


def test_format_2_backups_list_verify_and_restore(mixed, tmp_path):
    repo, old, new = mixed
    assert repo.backup_ids() == [*old, new]
    for backup_id in old:
        manifest = repo.read_manifest(backup_id)
        assert manifest.format_version == 2 and manifest.signature is not None
        report = repo.verify(backup_id)
        assert report.ok and report.format_version == 2 and report.bytes_checked > 0
        repo.restore(backup_id, tmp_path / backup_id)
    assert read_tree(tmp_path / old[0]) == tree(0)
    assert read_tree(tmp_path / old[1]) == tree(1)
    assert repo.history_problems() == []  # the chain starts at the first format-3 backup
    assert repo.read_manifest(new).header.previous is None


def test_format_2_signatures_still_checked_with_the_secret_key(mixed, tmp_path):
    repo, old, _ = mixed
    wrong = BackupRepository(repo.root, keys=SIGNING, hmac_key="another key")
    assert "signature does not match" in wrong.verify(old[0]).problems[0]
    unsigned = write_format2_backup(repo.root, {"x": b"x"}, None, "20261129T120000Z-00000009", WHEN.replace(hour=12))
    assert BackupRepository(repo.root).verify(unsigned).ok  # no key configured: nothing to require
    assert BackupRepository(repo.root, hmac_key=KEY).verify(unsigned).problems == [
        f"manifests/{unsigned}.json is not signed, and QUADRA_SECRET_KEY is set, so it requires signed backups"
    ]
    with pytest.raises(IntegrityError, match="is not signed"):
        repo.restore(unsigned, tmp_path / "t")


def test_production_without_the_secret_key_refuses_what_only_it_could_check(mixed, tmp_path):
    """QUADRA_SECRET_KEY is optional to start in production, but a signed format-2 manifest is not
    accepted unchecked: it names the variable; format 3 needs only the public keys."""
    repo, old, new = mixed
    without = BackupRepository(repo.root, keys=SIGNING, require_signature=True)
    assert without.verify(old[0]).problems == [
        f"manifests/{old[0]}.json: cannot check its signature: QUADRA_SECRET_KEY (or QUADRA_SECRET_KEY_FILE) is not set "
        "(format-2 backups are signed with it; required when QUADRA_ENV=production to verify them)"
    ]
    with pytest.raises(IntegrityError, match="QUADRA_SECRET_KEY_FILE"):
        without.restore(old[0], tmp_path / "t")
    assert without.verify(new).ok


def test_a_damaged_format_2_object_is_found_and_refused(mixed, tmp_path):
    repo, old, _ = mixed
    entry = next(e for e in repo.read_manifest(old[0]).files if e.path == "quadra.db")
    path = repo.object_path(entry.sha256)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    assert "is corrupt" in repo.verify(old[0]).problems[0]
    with pytest.raises(IntegrityError, match="does not restore to its SHA-256"):
        repo.restore(old[0], tmp_path / "t")


def test_gc_keeps_format_2_objects_until_their_backup_goes(mixed):
    repo, old, new = mixed
    assert repo.gc().removed == []
    repo.delete(old[0])
    removed = repo.gc().removed
    assert removed and all(r.startswith("objects/") for r in removed)
    assert repo.verify(old[1]).ok and repo.verify(new).ok and repo.history_problems() == []


def test_format_2_backups_export_and_import(mixed, tmp_path):
    repo, old, _ = mixed
    archive = repo.export(old[1], tmp_path / "old.tar")
    fresh = BackupRepository(tmp_path / "fresh", keys=SIGNING, hmac_key=KEY)
    assert fresh.import_archive(archive).backup_id == old[1]
    assert fresh.verify(old[1]).ok
    fresh.restore(old[1], tmp_path / "restored")
    assert read_tree(tmp_path / "restored") == tree(1)
