"""A history that cannot be rolled back or forged: every tampering with the chain of backups is
seen by verify (and stops the next backup from papering over it); legal deletions and imports
are not tampering."""

from __future__ import annotations

import json
import shutil

import pytest

from quadra_pipeline.backup import BackupRepository, IntegrityError
from quadra_pipeline.keys import generate

from .repository_helpers import (
    SIGNING,
    VERIFY_ONLY,
    rewrite_manifest,
    write_tree,
)


def _backups(repo, tmp_path, count=4):
    sources = write_tree(tmp_path / "src", {"a.bin": b"a" * 1000})
    ids = []
    for hour in range(count):
        (tmp_path / "src" / "a.bin").write_bytes(bytes([hour]) * 70_000)
        ids.append(repo.create(sources, sources={"hour": hour}).manifest.backup_id)
    return ids, sources


def _remove(repo, backup_id):
    repo.manifest_path(backup_id).unlink()
    repo.sidecar_path(backup_id).unlink()


def test_an_untouched_chain_is_clean_and_links_each_backup_to_the_one_before(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    assert repo.history_problems() == []
    headers = [json.loads(repo.manifest_path(i).read_bytes()) for i in ids]
    assert [h["sequence"] for h in headers] == [1, 2, 3, 4]
    assert headers[0]["previous"] is None
    for after, backup_id in zip(headers[1:], ids[:-1], strict=True):
        assert after["previous"] == {"backup_id": backup_id, "manifest_sha256": repo.manifest_sha256(backup_id)}
    head = json.loads(repo.history.head_path.read_bytes())
    assert (head["backup_id"], head["manifest_sha256"], head["sequence"]) == (ids[-1], repo.manifest_sha256(ids[-1]), 4)
    assert head["signature"]["algorithm"] == "ed25519"


def test_the_newest_backup_deleted_is_a_rollback(repo, tmp_path):
    ids, sources = _backups(repo, tmp_path)
    _remove(repo, ids[-1])
    assert repo.history_problems() == [
        f"head.json names backup {ids[-1]}, which is missing (the newest backup was deleted: rollback)"
    ]
    with pytest.raises(IntegrityError, match="the repository's history is broken"):
        repo.create(sources, sources={})  # the next backup does not paper over it
    # ... and with the head deleted too:
    repo.history.head_path.unlink()
    assert repo.history_problems() == [
        "head.json is missing although format-3 backups exist (the repository was rolled back or damaged)"
    ]


def test_a_backup_deleted_from_the_middle(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    _remove(repo, ids[1])
    assert repo.history_problems() == [
        f"backup {ids[1]}, the predecessor of {ids[2]}, is missing and was not pruned (deleted from the middle of the history)",
        f"backup {ids[0]} is not in the history the head leads to (an old manifest replayed, or one inserted)",
    ]


def test_an_old_head_replayed(repo, tmp_path):
    """A validly signed older head put back. One backup past it looks like a crash between a
    manifest and its head (accepted: test below); two are not (and the catalogue, in the service,
    catches a rollback by one: test_service.py)."""
    ids, sources = _backups(repo, tmp_path)
    old_head = tmp_path / "old-head.json"
    shutil.copy(repo.history.head_path, old_head)
    repo.create(sources, sources={"hour": 4})
    newest = repo.create(sources, sources={"hour": 5}).manifest.backup_id
    shutil.copy(old_head, repo.history.head_path)
    assert repo.history_problems() == [
        f"backup {newest} is not in the history the head leads to (an old manifest replayed, or one inserted)"
    ]


def test_a_head_that_does_not_match(repo, tmp_path):
    from quadra_pipeline.backup.format3 import Link

    ids, _ = _backups(repo, tmp_path)
    repo.history.write_head(Link(ids[-1], "0" * 64), 4, tmp_path)  # signed, but not this manifest's SHA-256
    assert repo.history_problems() == [f"head.json does not match backup {ids[-1]}'s manifest (replaced or rewritten)"]
    # Edited by hand (no key): its signature says so.
    document = json.loads(repo.history.head_path.read_bytes())
    document["sequence"] = 99
    repo.history.head_path.write_text(json.dumps(document))
    assert repo.history_problems()[0] == "head.json: signature does not match (altered, or forged without the signing key)"


def test_reordered_manifests(repo, tmp_path):
    """Two backups' places swapped: each names the other's predecessor (re-signed by a thief of
    the key, even); the sequence and the links no longer agree."""
    ids, _ = _backups(repo, tmp_path)
    second, third = (json.loads(repo.manifest_path(i).read_bytes()) for i in (ids[1], ids[2]))
    rewrite_manifest(repo, ids[1], lambda d: d.update(previous=third["previous"], sequence=3), sign=True)
    rewrite_manifest(repo, ids[2], lambda d: d.update(previous=second["previous"], sequence=2), sign=True)
    problems = repo.history_problems()
    assert problems and any("reordered" in p or "another manifest SHA-256" in p for p in problems), problems


def test_an_old_manifest_replayed_under_a_new_name(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    replay = "20991231T000000Z-ffffffff"
    shutil.copy(repo.manifest_path(ids[0]), repo.manifest_path(replay))
    shutil.copy(repo.sidecar_path(ids[0]), repo.sidecar_path(replay))
    report = repo.verify(replay)
    assert report.problems[0] == f"manifests/{replay}.json holds backup {ids[0]!r}, not {replay!r} (manifest swapped, renamed or replayed)"


def test_a_pruned_backup_that_comes_back_is_a_replay(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    manifest, sidecar = repo.manifest_path(ids[1]).read_bytes(), repo.sidecar_path(ids[1]).read_bytes()
    repo.delete_many([ids[1]])
    assert repo.history_problems() == []  # pruning stays legal: a signed record says so
    repo.manifest_path(ids[1]).write_bytes(manifest)
    repo.sidecar_path(ids[1]).write_bytes(sidecar)
    assert repo.history_problems() == [
        f"backup {ids[1]} was pruned (a signed record says so) but its manifest is back (replayed?)"
    ]


def test_pruning_and_deleting_the_newest_keep_the_history_legal(repo, tmp_path):
    ids, sources = _backups(repo, tmp_path, count=6)
    repo.delete_many([ids[0], ids[2], ids[3]])  # the oldest, and two in the middle
    assert repo.history_problems() == []
    repo.delete(ids[-1])  # the newest, on purpose: the head moves back to the newest left
    assert repo.history_problems() == []
    assert json.loads(repo.history.head_path.read_bytes())["backup_id"] == ids[-2]
    new = repo.create(sources, sources={}).manifest
    assert new.header.previous.backup_id == ids[-2] and repo.history_problems() == []
    records = sorted(repo.history.records_dir.iterdir())
    assert len(records) == 2 and all(json.loads(r.read_bytes())["signature"]["key"] == SIGNING.key_id for r in records)


def test_a_record_forged_without_the_key_does_not_make_a_deletion_legal(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    forger = BackupRepository(repo.root, keys=generate("ed25519"))
    entry = json.loads(repo.manifest_path(ids[1]).read_bytes())
    from quadra_pipeline.backup.format3 import Header
    from quadra_pipeline.backup.history import Entry

    forger.history.write_record("pruned", [Entry.of(Header.from_document(entry), repo.manifest_sha256(ids[1]))], tmp_path)
    _remove(repo, ids[1])
    problems = repo.history_problems()
    assert problems[0].startswith("history/") and "signed with another key" in problems[0]
    assert any(f"backup {ids[1]}, the predecessor of {ids[2]}, is missing and was not pruned" in p for p in problems)


def test_a_crash_between_the_manifest_and_the_head_is_not_tampering(repo, tmp_path):
    ids, sources = _backups(repo, tmp_path, count=2)
    head = repo.history.head_path.read_bytes()
    third = repo.create(sources, sources={}).manifest.backup_id
    repo.history.head_path.write_bytes(head)  # as if killed just before the head was written
    assert repo.history_problems() == []
    fourth = repo.create(sources, sources={}).manifest
    assert fourth.header.previous.backup_id == third


def test_only_the_public_key_checks_the_history_offsite(repo, tmp_path):
    ids, _ = _backups(repo, tmp_path)
    offsite = tmp_path / "offsite"
    shutil.copytree(repo.root, offsite)
    verifier = BackupRepository(offsite, keys=VERIFY_ONLY)
    assert verifier.history_problems() == [] and all(verifier.verify(i).ok for i in ids)
    _remove(verifier, ids[-1])
    assert "rollback" in verifier.history_problems()[0]
    wrong = BackupRepository(repo.root, keys=generate("ed25519"))
    assert any("signed with another key" in p for p in wrong.history_problems())
