"""The repository (format 3) under tampering and bad input: signatures (stripped, forged,
another key), damaged or swapped chunks, manifests, file lists and sidecars, unsafe paths;
each one names what is wrong, and nothing is lost or overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from quadra_pipeline.backup import (
    BackupError,
    BackupRepository,
    IntegrityError,
    SourceFile,
    UnknownBackupError,
    UnsafePathError,
)
from quadra_pipeline.keys import generate

from .repository_helpers import (
    backup,
    SIGNING,
    VERIFY_ONLY,
    chunks_of,
    flip_byte,
    read_tree,
    rewrite_manifest,
    sha256sum_check,
    sha256sum_check_backup,
    write_tree,
)


# Signatures -------------------------------------------------------------------------------


def test_signatures_required_in_production_optional_elsewhere(tmp_path):
    """Production refuses to write a backup without the signing key, when one is written (a
    process that only verifies or restores holds no private key)."""
    sources = write_tree(tmp_path / "src", {"a": b"a"})
    with pytest.raises(BackupError, match=r"signed backups are required \(QUADRA_ENV=production\) but no backup "
                                          r"signing key is configured: set QUADRA_BACKUP_SIGNING_KEY_FILE"):
        BackupRepository(tmp_path / "r", require_signature=True).create(sources, sources={})
    with pytest.raises(BackupError, match="this host verifies backups and cannot write them"):
        BackupRepository(tmp_path / "r", keys=VERIFY_ONLY, require_signature=True).create(sources, sources={})
    assert BackupRepository(tmp_path / "r").backup_ids() == []  # nothing was written
    development = BackupRepository(tmp_path / "r")
    backup_id = development.create(sources, sources={}).manifest.backup_id
    assert development.read_manifest(backup_id).signature is None
    assert development.verify(backup_id).ok and development.history_problems() == []
    # Whenever a key is configured, in any environment, an unsigned manifest is refused.
    keyed = BackupRepository(tmp_path / "r", keys=VERIFY_ONLY)
    problem = f"manifests/{backup_id}.json is not signed, and a verification key is configured, so it requires signed backups"
    assert keyed.verify(backup_id).problems == [problem]
    with pytest.raises(IntegrityError, match="is not signed"):
        keyed.restore(backup_id, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert any("head.json is not signed" in p for p in keyed.history_problems())


def test_the_public_key_alone_verifies_and_another_key_is_refused(repo, tmp_path):
    result, _ = backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    offsite = BackupRepository(repo.root, keys=VERIFY_ONLY)  # cannot sign ...
    assert offsite.verify(backup_id).ok and offsite.history_problems() == []  # ... and needs nothing else
    production_offsite = BackupRepository(repo.root, keys=VERIFY_ONLY, require_signature=True)
    assert production_offsite.verify(backup_id).ok and production_offsite.history_problems() == []
    with pytest.raises(BackupError, match="cannot write them"):
        production_offsite.create(write_tree(tmp_path / "more", {"b": b"b"}), sources={})
    other = BackupRepository(repo.root, keys=generate("ed25519"))
    [problem] = other.verify(backup_id).problems
    assert problem.startswith(f"manifests/{backup_id}.json is signed with another key (")


def test_a_stripped_signature_with_its_sidecar_recomputed_is_refused(repo, tmp_path):
    """Outside production too: the forger removes the signature and fixes the sidecar."""
    result, _ = backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    rewrite_manifest(repo, backup_id, lambda d: d.pop("signature"))
    assert sha256sum_check_backup(repo.root, backup_id).returncode == 0  # the sidecar agrees
    development_with_key = BackupRepository(repo.root, keys=VERIFY_ONLY)
    assert development_with_key.verify(backup_id).problems == [
        f"manifests/{backup_id}.json is not signed, and a verification key is configured, so it requires signed backups"
    ]


def test_a_forged_signature_is_refused(repo, tmp_path):
    """An edited manifest, signed by the forger's own key under the real key's id, or with its
    old signature kept: the public key says no."""
    result, _ = backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    forger = BackupRepository(repo.root, keys=generate("ed25519"))

    def edit(document):
        document["sources"] = {"mlflow": "9.9.9"}

    rewrite_manifest(repo, backup_id, edit)  # the old signature kept
    assert repo.verify(backup_id).problems == [
        f"manifests/{backup_id}.json: signature does not match (altered, or forged without the signing key)"
    ]
    rewrite_manifest(repo, backup_id, edit, sign=True, policy=forger.policy)  # signed with the forger's key ...
    rewrite_manifest(repo, backup_id, lambda d: d["signature"].update(key=SIGNING.key_id))  # ... claiming the real one
    assert repo.verify(backup_id).problems == [
        f"manifests/{backup_id}.json: signature does not match (altered, or forged without the signing key)"
    ]


# Bad input: each one names what is wrong, and nothing is lost or overwritten ---------------------


def _two_backups(repo, tmp_path):
    first, files = backup(repo, tmp_path, seed=0, name="a")
    second, _ = backup(repo, tmp_path, seed=1, name="b")
    return first.manifest.backup_id, second.manifest.backup_id, files


def _refused_restore(repo, backup_id, tmp_path, error=IntegrityError, match=None):
    target = tmp_path / "restore-target"
    with pytest.raises(error, match=match) as caught:
        repo.restore(backup_id, target)
    assert not target.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".restore-target")] == []
    assert "\n" not in str(caught.value)
    return caught.value


def test_flipped_byte_in_a_chunk(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    chunk = chunks_of(repo, first, "quadra.db")[0]
    flip_byte(chunk, 1234)
    assert repo.verify(first, read="none").ok  # presence and sizes: a flipped byte keeps the size
    report = repo.verify(first)  # re-read
    assert report.problems == [f"quadra.db: chunk chunks/{chunk.name[:2]}/{chunk.name} is corrupt: its content does not hash to its name"]
    assert not repo.verify(first, read={chunk.name}).ok  # the rotation, when it reaches it
    assert sha256sum_check_backup(repo.root, first).returncode != 0  # the real tools agree
    _refused_restore(repo, first, tmp_path, match=f"backup {first}: quadra.db does not restore to its SHA-256")
    assert repo.verify(second).ok


def test_truncated_missing_and_symlinked_chunks(repo, tmp_path):
    first, second, files = _two_backups(repo, tmp_path)
    truncated = chunks_of(repo, first, "models/champion.pt")[0]
    os.chmod(truncated, 0o644)
    size = truncated.stat().st_size
    os.truncate(truncated, 1000)
    missing = chunks_of(repo, first, "mlflow/mlflow.db")[0]
    missing.unlink()
    linked = chunks_of(repo, first, "quadra.db")[0]
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    linked.unlink()
    linked.symlink_to(secret)
    report = repo.verify(first, read="none")  # found without reading any data
    rel = lambda c: f"chunks/{c.name[:2]}/{c.name}"  # noqa: E731
    assert sorted(report.problems) == sorted([
        f"mlflow/mlflow.db: chunk {rel(missing)} is missing",
        f"models/champion.pt: chunk {rel(truncated)} is truncated: 1000 bytes stored, the file list says {size}",
        f"models/copy-of-champion.pt: chunk {rel(truncated)} is truncated: 1000 bytes stored, the file list says {size}",
        f"quadra.db: chunk {rel(linked)} is not a regular file",
    ])
    _refused_restore(repo, first, tmp_path)
    assert repo.verify(second).ok


def test_manifest_swapped_with_another_backups(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    shutil.copy(repo.manifest_path(second), repo.manifest_path(first))
    shutil.copy(repo.sidecar_path(second), repo.sidecar_path(first))
    with pytest.raises(IntegrityError) as caught:
        repo.read_manifest(first)
    assert caught.value.problems[0] == (
        f"manifests/{first}.json holds backup {second!r}, not {first!r} (manifest swapped, renamed or replayed)"
    )
    _refused_restore(repo, first, tmp_path, match="manifest swapped, renamed or replayed")


def test_forged_file_list_object(repo, tmp_path):
    """The file-list object rewritten in place (a file dropped, under the old name)."""
    first, second, files = _two_backups(repo, tmp_path)
    manifest = repo.read_manifest(first)
    path = repo.object_path(manifest.header.files_object)
    entries = [e for e in json.loads(path.read_bytes()) if e["path"] != "quadra.db"]
    os.chmod(path, 0o644)
    path.write_bytes(b"[\n" + b",\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in entries) + b"\n]\n")
    rel = f"objects/{manifest.header.files_object[:2]}/{manifest.header.files_object}"
    report = repo.verify(first)
    assert len(report.problems) == 1 and report.problems[0].startswith(f"file list {rel} is corrupt: its content hashes to ")
    assert sha256sum_check(repo.root, f"manifests/{first}.sha256").returncode != 0
    _refused_restore(repo, first, tmp_path, match="file list .* is corrupt")
    assert repo.verify(second).ok
    repo.create(write_tree(tmp_path / "a", files), sources={"seed": 0, "mlflow": "3.17.0"})  # repairs the shared list
    assert repo.verify(first).ok


def test_missing_file_list_and_gc_refuses_to_guess(repo, tmp_path):
    first, _ = backup(repo, tmp_path)
    sha = first.manifest.header.files_object
    repo.object_path(sha).unlink()
    problem = f"file list objects/{sha[:2]}/{sha} is missing"
    assert repo.verify(first.manifest.backup_id).problems == [problem]
    _refused_restore(repo, first.manifest.backup_id, tmp_path, match=problem)
    with pytest.raises(BackupError, match="neither its file list nor its checksum list can be read; refusing"):
        repo.gc()
    assert all(repo.chunks.path(c).exists() for c in first.manifest.chunks)


def test_edited_or_missing_sidecar(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    sidecar = repo.sidecar_path(first)
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join([lines[1], lines[0]]) + "\n")
    assert repo.verify(first).problems == [
        f"checksum sidecar manifests/{first}.sha256 is not two lines in the order: manifest, file list"
    ]
    sidecar.write_text(lines[0] + "\n")
    assert repo.verify(first).problems == [f"checksum sidecar manifests/{first}.sha256 does not list {lines[1].split('  ')[1]}"]
    sidecar.unlink()
    assert repo.verify(first).problems == [f"checksum sidecar manifests/{first}.sha256 is missing"]
    _refused_restore(repo, first, tmp_path, match="sidecar .* is missing")


@pytest.mark.parametrize(
    ("path", "mode", "words"),
    [
        ("../../outside.txt", "0644", "contains '..'"),
        ("/tmp/absolute.txt", "0644", "absolute path"),
        ("link", "120777", "is a symlink"),
        ("dev", "020644", "is a device"),
    ],
)
def test_unsafe_path_in_a_signed_manifest(repo, tmp_path, path, mode, words):
    """Even with a valid signature (a bug, or a stolen key), a file list cannot write outside the tree."""
    first, _, _ = _two_backups(repo, tmp_path)
    entries = json.loads(repo.object_path(repo.read_manifest(first).header.files_object).read_bytes())
    entries[0].update(path=path, mode=mode)
    data = b"[\n" + b",\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in entries) + b"\n]\n"
    sha = hashlib.sha256(data).hexdigest()
    repo.object_path(sha).parent.mkdir(parents=True, exist_ok=True)
    repo.object_path(sha).write_bytes(data)
    rewrite_manifest(repo, first, lambda d: d.update(files_object=sha), sign=True)
    with pytest.raises(UnsafePathError, match=words) as caught:
        repo.read_manifest(first)
    assert str(caught.value).startswith(f"backup {first}: file list objects/{sha[:2]}/{sha}: ")
    report = repo.verify(first)
    assert not report.ok and words in report.problems[0]
    _refused_restore(repo, first, tmp_path, error=UnsafePathError, match=words)
    assert not (tmp_path / "outside.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_garbage_manifest(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    repo.manifest_path(first).write_bytes(b"\x00\x01 not json")
    report = repo.verify(first)
    assert report.problems[0].startswith(f"manifests/{first}.json: manifest is not valid JSON")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        repo.read_manifest(first)


def test_unknown_backup(repo, tmp_path):
    backup(repo, tmp_path)
    for call in (repo.read_manifest, repo.verify, repo.delete, lambda i: repo.restore(i, tmp_path / "t")):
        with pytest.raises(UnknownBackupError, match=f"backup 20000101T000000Z-00000000: no such backup in {repo.root}"):
            call("20000101T000000Z-00000000")
    with pytest.raises(BackupError, match="backup id '../../etc/passwd' is not valid"):
        repo.verify("../../etc/passwd")
    assert BackupRepository(tmp_path / "nothing-here").backup_ids() == []


def test_restore_never_overwrites(repo, tmp_path):
    result, _ = backup(repo, tmp_path)
    target = tmp_path / "live"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(BackupError, match=f"{target}: restore target is not empty; refusing to overwrite it"):
        repo.restore(result.manifest.backup_id, target)
    assert read_tree(target) == {"keep.txt": b"precious"}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BackupError, match="exists and is not a directory"):
        repo.restore(result.manifest.backup_id, a_file)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafePathError, match="restore target is a symlink"):
        repo.restore(result.manifest.backup_id, link)


def test_bad_sources_are_refused_before_anything_is_written(repo, tmp_path):
    backup(repo, tmp_path)
    before = sorted(p.relative_to(repo.root) for p in repo.root.rglob("*"))
    good = write_tree(tmp_path / "s", {"a": b"a"})[0]
    link = tmp_path / "s" / "link"
    link.symlink_to(good.source)
    cases = [
        ([SourceFile("../a", good.source)], UnsafePathError, "path '../a' in backup .* file list contains '..'"),
        ([SourceFile("/a", good.source)], UnsafePathError, "absolute path '/a'"),
        ([good, SourceFile("a", good.source)], BackupError, "path 'a' is given twice"),
        ([good, SourceFile("a/b", good.source)], UnsafePathError, "lies under 'a'"),
        ([SourceFile("x", tmp_path / "missing")], BackupError, f"backup source for 'x': {tmp_path / 'missing'} does not exist"),
        ([SourceFile("x", link)], UnsafePathError, f"backup source for 'x': {link} is a symlink"),
        ([SourceFile("x", tmp_path)], BackupError, "is not a regular file"),
        ([SourceFile("x", Path("/dev/null"))], UnsafePathError, "is a device"),
        ([SourceFile("x", good.source, 0o4755)], BackupError, "setuid"),
    ]
    for files, error, words in cases:
        with pytest.raises(error, match=words):
            repo.create(files, sources={})
    with pytest.raises(BackupError, match="sources are not JSON-serialisable"):
        repo.create([good], sources={"when": datetime.now()})
    assert sorted(p.relative_to(repo.root) for p in repo.root.rglob("*")) == before


