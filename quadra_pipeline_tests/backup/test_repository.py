"""The repository: create, verify, restore, dedup, sidecars, signatures, delete, gc, and bad input
(the data objects, the manifest, and its two metadata objects: the file list and the checksum list)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from quadra_pipeline.backup import (
    BackupError,
    BackupLockedError,
    BackupRepository,
    IntegrityError,
    SourceFile,
    UnknownBackupError,
    UnsafePathError,
)
from quadra_pipeline.backup import _fs, statcache
from quadra_pipeline.backup.manifest import encode_checksum_list

from .test_repository_helpers import (
    KEY,
    assert_untouched,
    disk_bytes,
    flip_byte,
    read_tree,
    repo,  # noqa: F401  (fixture)
    checksum_list_of,
    sha256sum_check,
    sha256sum_check_backup,
    tree,
    write_tree,
)


def _backup(repo: BackupRepository, tmp_path: Path, seed: int = 0, name: str = "src", **kwargs):
    files = tree(seed)
    sources = write_tree(tmp_path / name, files)
    return repo.create(sources, sources={"seed": seed, "mlflow": "3.17.0"}, **kwargs), files


def _object_of(repo: BackupRepository, backup_id: str, path: str) -> Path:
    entry = next(e for e in repo.read_manifest(backup_id).files if e.path == path)
    return repo.object_path(entry.sha256)


# Round trip -------------------------------------------------------------------------------


def test_create_verify_restore_round_trip(repo, tmp_path):
    files = tree(0)
    sources = write_tree(tmp_path / "src", files)
    sources[0] = SourceFile(sources[0].path, sources[0].source, 0o600)
    result = repo.create(sources, sources={"mlflow": "3.17.0"})
    manifest = result.manifest
    assert result.file_count == len(files) == len(manifest.files)
    assert result.total_bytes == sum(map(len, files.values())) == manifest.total_bytes
    assert result.stored_bytes == sum(len(v) for k, v in files.items() if k != "models/copy-of-champion.pt")
    assert result.manifest_sha256 == hashlib.sha256(repo.manifest_path(manifest.backup_id).read_bytes()).hexdigest()
    assert repo.manifest_sha256(manifest.backup_id) == result.manifest_sha256
    assert manifest.signature is not None and manifest.sources == {"mlflow": "3.17.0"}
    assert repo.backup_ids() == [manifest.backup_id]
    assert repo.read_manifest(manifest.backup_id) == manifest

    report = repo.verify(manifest.backup_id)
    assert report.ok and report.problems == []
    assert report.files_checked == len(files)
    assert report.bytes_checked == result.stored_bytes

    target = tmp_path / "restored" / "home"
    assert repo.restore(manifest.backup_id, target) == manifest
    assert read_tree(target) == files
    assert stat.S_IMODE((target / sources[0].path).stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "quadra.db").stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["home"]  # no staging left
    assert os.listdir(repo.staging_dir) == []


def test_restore_into_an_existing_empty_directory(repo, tmp_path):
    result, files = _backup(repo, tmp_path)
    target = tmp_path / "empty"
    target.mkdir()
    repo.restore(result.manifest.backup_id, target)
    assert read_tree(target) == files


def test_objects_are_stored_raw_under_their_sha256(repo, tmp_path):
    result, files = _backup(repo, tmp_path)
    manifest = result.manifest
    contents = {hashlib.sha256(data).hexdigest(): data for data in files.values()}
    # ... and the two metadata objects: the file list and the checksum list.
    contents[manifest.files_object] = manifest.file_list_bytes()
    contents[manifest.checksums_object] = manifest.checksum_list_bytes()
    stored = {p.name: p.read_bytes() for p in (repo.root / "objects").rglob("*") if p.is_file()}
    assert stored == contents
    assert json.loads(stored[manifest.files_object]) == [e.to_dict() for e in manifest.files]
    document = json.loads(repo.manifest_path(manifest.backup_id).read_bytes())
    assert document["files_object"] == manifest.files_object and document["checksums_object"] == manifest.checksums_object
    assert document["file_count"] == len(files) and document["total_bytes"] == manifest.total_bytes
    assert "files" not in document
    for sha in stored:
        assert (repo.root / "objects" / sha[:2] / sha).is_file()


def test_sidecar_is_three_lines_and_checks_every_byte_in_two_steps_with_real_sha256sum(repo, tmp_path):
    result, files = _backup(repo, tmp_path)
    backup_id, manifest = result.manifest.backup_id, result.manifest
    files_rel = f"objects/{manifest.files_object[:2]}/{manifest.files_object}"
    checksums_rel = f"objects/{manifest.checksums_object[:2]}/{manifest.checksums_object}"
    assert repo.sidecar_path(backup_id).read_text().splitlines() == [
        f"{result.manifest_sha256}  manifests/{backup_id}.json",
        f"{manifest.files_object}  {files_rel}",
        f"{manifest.checksums_object}  {checksums_rel}",
    ]
    # The checksum list: every data object, once, sorted, paths relative to the root.
    lines = (repo.root / checksums_rel).read_text().splitlines()
    assert lines == sorted(set(lines)) == [f"{sha}  objects/{sha[:2]}/{sha}" for sha in manifest.object_ids]
    assert len(lines) == len(files) - 1  # the copy of the champion shares its object

    # Exactly what docs/BACKUP_FORMAT.md tells a user to type, in a shell, from the root.
    def two_steps(root: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", f"sha256sum -c manifests/{backup_id}.sha256 && sha256sum -c {checksums_rel}"],
            cwd=root, capture_output=True, text=True,
        )

    checked = two_steps(repo.root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [f"manifests/{backup_id}.json: OK", f"{files_rel}: OK", f"{checksums_rel}: OK"] + [
        f"objects/{sha[:2]}/{sha}: OK" for sha in manifest.object_ids
    ]
    assert checksum_list_of(repo.root, backup_id) == checksums_rel
    # Anywhere else too: the paths are relative to the repository root.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(repo.root, moved)
    assert two_steps(moved).returncode == 0
    # Each step fails on what it covers: a flipped byte in a data object fails the second step only.
    flip_byte(moved / f"objects/{manifest.object_ids[0][:2]}/{manifest.object_ids[0]}", 0)
    assert sha256sum_check(moved, f"manifests/{backup_id}.sha256").returncode == 0
    failed = two_steps(moved)
    assert failed.returncode != 0 and f"objects/{manifest.object_ids[0][:2]}/{manifest.object_ids[0]}: FAILED" in failed.stdout
    flip_byte(moved / files_rel, 3)
    failed = two_steps(moved)
    assert failed.returncode != 0 and f"{files_rel}: FAILED" in failed.stdout


def test_the_sidecar_stays_three_lines_however_many_files(repo, tmp_path):
    many = {f"artifacts/{i:03d}.txt": f"file {i}".encode() for i in range(150)}
    result = repo.create(write_tree(tmp_path / "src", many), sources={})
    backup_id = result.manifest.backup_id
    assert len(repo.sidecar_path(backup_id).read_text().splitlines()) == 3
    assert repo.manifest_path(backup_id).stat().st_size < 1024
    checked = sha256sum_check_backup(repo.root, backup_id)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 3 + 150


def test_unchanged_backups_share_the_file_list_and_the_checksum_list(repo, tmp_path):
    sources = write_tree(tmp_path / "src", tree(0))
    first = repo.create(sources, sources={"hour": 0}).manifest
    objects = sorted(p.name for p in repo.objects_dir.rglob("*") if p.is_file())
    second = repo.create(sources, sources={"hour": 1}).manifest
    assert (second.files_object, second.checksums_object) == (first.files_object, first.checksums_object)
    assert sorted(p.name for p in repo.objects_dir.rglob("*") if p.is_file()) == objects  # only a manifest and a sidecar
    assert repo.read_manifest(second.backup_id).files == first.files
    repo.delete(first.backup_id)
    repo.gc()
    assert_untouched(repo, [second.backup_id])


def test_24_unchanged_backups_take_at_most_1_1x_the_bytes_of_one(repo, tmp_path):
    files = tree(1, scale=8)  # about 2.2 MB
    sources = write_tree(tmp_path / "src", files)
    repo.create(sources, sources={"hour": 0})
    one = disk_bytes(repo.root)
    for hour in range(1, 24):
        result = repo.create(sources, sources={"hour": hour})
        assert result.stored_bytes == 0
    assert len(repo.backup_ids()) == 24
    all_24 = disk_bytes(repo.root)
    assert all_24 <= 1.1 * one, f"{all_24} bytes for 24 backups, {one} for one ({all_24 / one:.3f}x)"


def test_only_changed_content_is_stored_again(repo, tmp_path):
    files = tree(0)
    sources = write_tree(tmp_path / "src", files)
    repo.create(sources, sources={})
    (tmp_path / "src" / "quadra.db").write_bytes(b"changed" * 100)
    second = repo.create(sources, sources={})
    assert second.stored_bytes == 700
    assert second.files_read == len(files)


def test_backup_ids_sort_oldest_first_and_ignore_unfinished(repo, tmp_path):
    start = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    sources = write_tree(tmp_path / "src", {"a": b"a"})
    ids = [repo.create(sources, sources={}, created_at=start + timedelta(minutes=m)).manifest.backup_id for m in (0, 1, 2)]
    assert repo.backup_ids() == ids
    (repo.manifests_dir / "20261129T170000Z-00000000.sha256").write_text("x")  # a sidecar without its manifest
    (repo.manifests_dir / ".20261129T170000Z-00000000.json.abcd.tmp").write_text("x")
    assert repo.backup_ids() == ids
    assert repo.cleanup_staging() == 2
    assert sorted(os.listdir(repo.manifests_dir)) == sorted(f"{i}.{ext}" for i in ids for ext in ("json", "sha256"))


def test_explicit_backup_id_and_duplicates(repo, tmp_path):
    sources = write_tree(tmp_path / "src", {"a": b"a"})
    repo.create(sources, sources={}, backup_id="hourly-2026-11-29T16")
    with pytest.raises(BackupError, match="backup hourly-2026-11-29T16 already exists in"):
        repo.create(sources, sources={}, backup_id="hourly-2026-11-29T16")
    with pytest.raises(BackupError, match="backup id '../x' is not valid"):
        repo.create(sources, sources={}, backup_id="../x")


def test_empty_backup(repo, tmp_path):
    result = repo.create([], sources={"note": "nothing"})
    assert repo.verify(result.manifest.backup_id).ok
    repo.restore(result.manifest.backup_id, tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []


# Signatures -------------------------------------------------------------------------------


def test_signatures_required_in_production_optional_in_development(tmp_path):
    with pytest.raises(BackupError, match="signed backups are required but no secret key was given"):
        BackupRepository(tmp_path / "r", None, require_signature=True)
    with pytest.raises(BackupError, match="signed backups are required"):
        BackupRepository(tmp_path / "r", "", require_signature=True)
    development = BackupRepository(tmp_path / "r")
    sources = write_tree(tmp_path / "src", {"a": b"a"})
    backup_id = development.create(sources, sources={}).manifest.backup_id
    assert development.read_manifest(backup_id).signature is None
    assert development.verify(backup_id).ok
    assert BackupRepository(tmp_path / "r", KEY).verify(backup_id).ok  # key set, not required
    production = BackupRepository(tmp_path / "r", KEY, require_signature=True)
    report = production.verify(backup_id)
    assert not report.ok
    assert report.problems == [f"manifests/{backup_id}.json is not signed, and this repository requires signed backups"]
    with pytest.raises(IntegrityError, match="is not signed"):
        production.restore(backup_id, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_manifest_signed_with_another_key_is_refused(repo, tmp_path):
    result, _ = _backup(repo, tmp_path)
    other = BackupRepository(repo.root, "another key")
    report = other.verify(result.manifest.backup_id)
    assert not report.ok and "signature does not match" in report.problems[0]


# Bad input: each one names what is wrong, and nothing is lost or overwritten ---------------------


def _two_backups(repo, tmp_path):
    first, files = _backup(repo, tmp_path, seed=0, name="a")
    second, _ = _backup(repo, tmp_path, seed=1, name="b")
    return first.manifest.backup_id, second.manifest.backup_id, files


def _refused_restore(repo, backup_id, tmp_path, error=IntegrityError, match=None):
    target = tmp_path / "restore-target"
    with pytest.raises(error, match=match) as caught:
        repo.restore(backup_id, target)
    assert not target.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".restore-target")] == []
    assert "\n" not in str(caught.value)
    return caught.value


def test_flipped_byte_in_an_object(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    obj = _object_of(repo, first, "quadra.db")
    flip_byte(obj, 1234)
    report = repo.verify(first)
    assert not report.ok
    assert report.problems == [
        f"quadra.db: object objects/{obj.name[:2]}/{obj.name} is corrupt: its content hashes to "
        f"{hashlib.sha256(obj.read_bytes()).hexdigest()[:12]}..., not its name (altered or flipped bytes)"
    ]
    assert sha256sum_check_backup(repo.root, first).returncode != 0  # the real tool agrees
    error = _refused_restore(repo, first, tmp_path, match=f"backup {first} cannot be restored, nothing was written: 1 problem: quadra.db")
    assert error.problems == report.problems
    assert repo.verify(second).ok


def test_truncated_object(repo, tmp_path):
    first, second, files = _two_backups(repo, tmp_path)
    obj = _object_of(repo, first, "models/champion.pt")
    os.chmod(obj, 0o644)
    os.truncate(obj, 1000)
    report = repo.verify(first)
    size = len(files["models/champion.pt"])
    assert report.problems == [
        f"models/champion.pt (+1 more files): object objects/{obj.name[:2]}/{obj.name} is truncated: 1000 bytes, "
        f"the manifest says {size}"
    ]
    _refused_restore(repo, first, tmp_path, match="is truncated")
    assert repo.verify(second).ok


def test_missing_object(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    obj = _object_of(repo, first, "mlflow/mlflow.db")
    obj.unlink()
    report = repo.verify(first)
    assert report.problems == [f"mlflow/mlflow.db: object objects/{obj.name[:2]}/{obj.name} is missing"]
    _refused_restore(repo, first, tmp_path, match="mlflow/mlflow.db: object .* is missing")
    assert repo.verify(second).ok


def test_object_replaced_by_a_symlink(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    obj = _object_of(repo, first, "quadra.db")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    obj.unlink()
    obj.symlink_to(secret)
    report = repo.verify(first)
    assert len(report.problems) == 1 and "is unusable" in report.problems[0] and "symlink" in report.problems[0]
    _refused_restore(repo, first, tmp_path, match="symlink")


def test_manifest_swapped_with_another_backups(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    # Someone renames the second backup's manifest (and sidecar) to the first one's id.
    shutil.copy(repo.manifest_path(second), repo.manifest_path(first))
    shutil.copy(repo.sidecar_path(second), repo.sidecar_path(first))
    with pytest.raises(IntegrityError) as caught:
        repo.read_manifest(first)
    assert caught.value.problems[0] == (
        f"manifests/{first}.json holds backup {second!r}, not {first!r} (manifest swapped, renamed or replayed)"
    )
    assert str(caught.value).startswith(f"backup {first}: ")
    assert not repo.verify(first).ok
    _refused_restore(repo, first, tmp_path, match="manifest swapped, renamed or replayed")
    assert repo.verify(second).ok


def test_old_signed_manifest_replayed_under_a_new_name(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    replay = "20991231T000000Z-ffffffff"
    shutil.copy(repo.manifest_path(first), repo.manifest_path(replay))
    shutil.copy(repo.sidecar_path(first), repo.sidecar_path(replay))
    assert repo.backup_ids()[-1] == replay  # it would pose as the newest backup
    report = repo.verify(replay)
    assert not report.ok
    assert report.problems[0] == f"manifests/{replay}.json holds backup {first!r}, not {replay!r} (manifest swapped, renamed or replayed)"
    assert f"checksum sidecar manifests/{replay}.sha256 does not list manifests/{replay}.json" in report.problems
    _refused_restore(repo, replay, tmp_path, match="replayed")
    assert repo.verify(first).ok and repo.verify(second).ok


def _store_object(repo, data: bytes) -> str:
    """Put `data` into the repository as a proper content-addressed object (a forger can too)."""
    sha = hashlib.sha256(data).hexdigest()
    path = repo.object_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return sha


def _canonical_list(entries: list[dict]) -> bytes:
    """A file list in the stored encoding, without validating the entries (a forger's, or a bug's)."""
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in entries]
    return b"[\n" + b",\n".join(lines) + b"\n]\n" if lines else b"[]\n"


def _write_sidecar(repo, backup_id, document, manifest_data: bytes) -> None:
    files, checksums = document["files_object"], document["checksums_object"]
    repo.sidecar_path(backup_id).write_text(
        f"{hashlib.sha256(manifest_data).hexdigest()}  manifests/{backup_id}.json\n"
        f"{files}  objects/{files[:2]}/{files}\n{checksums}  objects/{checksums[:2]}/{checksums}\n"
    )


def _forge(repo, backup_id, *, key, edit_files=None, edit=None, fix_sidecar: bool = True):
    """A forger's work, done properly: edit the file list (`edit_files(entries)`) and store it, with
    its checksum list, as content-addressed objects; point the manifest at them with matching counts;
    `edit(document)` the manifest; rewrite the sidecar to match. Only the signature can tell.
    `key`: bytes to sign with, "keep" to leave the document's signature, None for no signature."""
    document = json.loads(repo.manifest_path(backup_id).read_bytes())
    if edit_files is not None:
        entries = json.loads(repo.object_path(document["files_object"]).read_bytes())
        edit_files(entries)
        document["files_object"] = _store_object(repo, _canonical_list(entries))
        document["checksums_object"] = _store_object(repo, encode_checksum_list(e["sha256"] for e in entries))
        document["file_count"] = len(entries)
        document["total_bytes"] = sum(e["size"] for e in entries)
    if edit is not None:
        edit(document)
    body = {k: v for k, v in document.items() if k != "signature" or key == "keep"}
    if isinstance(key, bytes):
        body.pop("signature", None)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        body["signature"] = hmac.new(key, canonical, hashlib.sha256).hexdigest()
    data = json.dumps(body, indent=2, sort_keys=True).encode()
    os.chmod(repo.manifest_path(backup_id), 0o644)
    repo.manifest_path(backup_id).write_bytes(data)
    if fix_sidecar:
        _write_sidecar(repo, backup_id, body, data)
    return body


def _set_mode_777(entries):
    entries[0]["mode"] = "0777"


@pytest.mark.parametrize("how", ["signature left", "wrong key", "signature removed"])
def test_forged_manifest_without_the_key(repo, tmp_path, how):
    first, second, _ = _two_backups(repo, tmp_path)
    key = {"signature left": "keep", "wrong key": b"guessed key", "signature removed": None}[how]
    _forge(repo, first, key=key, edit_files=_set_mode_777, edit=lambda d: d["sources"].update(mlflow="9.9.9"))
    # The forger fixed the sidecar and stored proper objects, so only the signature can tell.
    assert sha256sum_check_backup(repo.root, first).returncode == 0
    report = repo.verify(first)
    expected = (
        f"manifests/{first}.json is not signed, and this repository requires signed backups"
        if how == "signature removed"
        else f"manifests/{first}.json: signature does not match (manifest altered, or signed with another key)"
    )
    assert report.problems == [expected]
    _refused_restore(repo, first, tmp_path, match=expected.split(":")[-1].strip().split(" (")[0])
    assert repo.verify(second).ok


def test_forged_manifest_keeps_the_old_signature(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    old = repo.read_manifest(first)

    def drop_quadra_db(entries):
        entries[:] = [e for e in entries if e["path"] != "quadra.db"]

    forged = _forge(repo, first, key="keep", edit_files=drop_quadra_db, fix_sidecar=False)
    report = repo.verify(first)
    assert f"manifests/{first}.json: signature does not match (manifest altered, or signed with another key)" in report.problems
    assert any("does not match the SHA-256 in" in p for p in report.problems)  # sidecar not fixed: caught twice
    files_rel = f"objects/{forged['files_object'][:2]}/{forged['files_object']}"
    assert f"checksum sidecar manifests/{first}.sha256 does not list {files_rel}" in report.problems
    old_rel = f"objects/{old.files_object[:2]}/{old.files_object}"
    assert f"checksum sidecar manifests/{first}.sha256 lists {old_rel}, which the manifest does not name" in report.problems


def test_manifest_pointing_to_another_backups_file_list(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    theirs = repo.read_manifest(second)
    # Only the file list is swapped (the two trees have the same number of files and bytes).
    _forge(repo, first, key="keep", edit=lambda d: d.update(files_object=theirs.files_object))
    report = repo.verify(first)
    assert report.problems[0] == f"manifests/{first}.json: signature does not match (manifest altered, or signed with another key)"
    assert report.problems[1].startswith(f"manifests/{first}.json: checksums_object ") and "is not the checksum list of the files in" in report.problems[1]
    assert len(report.problems) == 2
    _refused_restore(repo, first, tmp_path, match="signature does not match")
    # Without the key (development) the file list and the checksum list still disagree.
    unkeyed = BackupRepository(repo.root)
    assert [p.split(": ", 1)[1][:17] for p in unkeyed.verify(first).problems] == ["checksums_object "]
    assert repo.verify(second).ok


def test_forged_file_list_object(repo, tmp_path):
    """The file-list object rewritten in place (a file dropped, under the old name)."""
    first, second, files = _two_backups(repo, tmp_path)
    manifest = repo.read_manifest(first)
    path = repo.object_path(manifest.files_object)
    entries = [e for e in json.loads(path.read_bytes()) if e["path"] != "quadra.db"]
    os.chmod(path, 0o644)
    path.write_bytes(_canonical_list(entries))
    rel = f"objects/{manifest.files_object[:2]}/{manifest.files_object}"
    report = repo.verify(first)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"file list {rel} is corrupt: its content hashes to ")
    assert report.files_checked == 0
    with pytest.raises(IntegrityError, match=f"backup {first}: 1 problem: file list {rel} is corrupt"):
        repo.read_manifest(first)
    assert sha256sum_check(repo.root, f"manifests/{first}.sha256").returncode != 0  # step 1 catches it
    _refused_restore(repo, first, tmp_path, match="file list .* is corrupt")
    assert repo.verify(second).ok
    # The next backup of the same tree repairs the shared file list.
    repo.create(write_tree(tmp_path / "a", files), sources={"seed": 0, "mlflow": "3.17.0"})
    assert repo.verify(first).ok


@pytest.mark.parametrize("which", ["file list", "checksum list"])
def test_missing_metadata_object(repo, tmp_path, which):
    first, second, _ = _two_backups(repo, tmp_path)
    manifest = repo.read_manifest(first)
    sha = manifest.files_object if which == "file list" else manifest.checksums_object
    repo.object_path(sha).unlink()
    problem = f"{which} objects/{sha[:2]}/{sha} is missing"
    assert repo.verify(first).problems == [problem]
    with pytest.raises(IntegrityError, match=f"backup {first}: 1 problem: {problem}"):
        repo.read_manifest(first)
    _refused_restore(repo, first, tmp_path, match=problem)
    # gc still knows the data objects (from the other list) and removes none of them.
    assert repo.gc().removed == []
    assert all(repo.object_path(s).exists() for s in manifest.object_ids)
    assert repo.verify(second).ok


def test_gc_refuses_when_neither_the_file_list_nor_the_checksum_list_can_be_read(repo, tmp_path):
    first, _ = _backup(repo, tmp_path)
    manifest = first.manifest
    repo.object_path(manifest.files_object).unlink()
    repo.object_path(manifest.checksums_object).unlink()
    with pytest.raises(BackupError, match=f"backup {manifest.backup_id}: neither its file list nor its checksum list can be read; refusing"):
        repo.gc()
    assert all(repo.object_path(s).exists() for s in manifest.object_ids)


def test_checksum_list_that_omits_an_object(repo, tmp_path):
    first, second, _ = _two_backups(repo, tmp_path)
    manifest = repo.read_manifest(first)
    omitted = _object_of(repo, first, "quadra.db").name
    shorter = encode_checksum_list(s for s in manifest.object_ids if s != omitted)

    # In place, under the old name: the content no longer hashes to it (and step 1 of sha256sum fails).
    path = repo.object_path(manifest.checksums_object)
    os.chmod(path, 0o644)
    path.write_bytes(shorter)
    rel = f"objects/{manifest.checksums_object[:2]}/{manifest.checksums_object}"
    report = repo.verify(first)
    assert len(report.problems) == 1 and report.problems[0].startswith(f"checksum list {rel} is corrupt")
    assert sha256sum_check(repo.root, f"manifests/{first}.sha256").returncode != 0
    path.write_bytes(manifest.checksum_list_bytes())
    assert repo.verify(first).ok

    # Properly stored under its own name, the manifest and sidecar pointed at it: `sha256sum` alone
    # is satisfied (and would miss damage to the omitted object); verify is not.
    _forge(repo, first, key="keep", edit=lambda d: d.update(checksums_object=_store_object(repo, shorter)))
    flip_byte(repo.object_path(omitted), 10)
    assert sha256sum_check_backup(repo.root, first).returncode == 0
    problems = repo.verify(first).problems
    assert problems[0] == f"manifests/{first}.json: signature does not match (manifest altered, or signed with another key)"
    assert any("is not the checksum list of the files in" in p for p in problems)
    assert any(p.startswith("quadra.db: object ") and "is corrupt" in p for p in problems)
    _refused_restore(repo, first, tmp_path, match="signature does not match")


def test_sidecar_lines_out_of_order(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    sidecar = repo.sidecar_path(first)
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    assert repo.verify(first).problems == [
        f"checksum sidecar manifests/{first}.sha256 is not three lines in the order: manifest, file list, checksum list"
    ]


def test_edited_or_missing_sidecar(repo, tmp_path):
    first, _, _ = _two_backups(repo, tmp_path)
    sidecar = repo.sidecar_path(first)
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join(lines[:-1]) + "\n")  # one object dropped
    report = repo.verify(first)
    assert report.problems == [f"checksum sidecar manifests/{first}.sha256 does not list {lines[-1].split('  ')[1]}"]
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

    def unsafe(entries):
        entries[0]["path"] = path
        entries[0]["mode"] = mode

    forged = _forge(repo, first, key=KEY.encode(), edit_files=unsafe)
    files_rel = f"objects/{forged['files_object'][:2]}/{forged['files_object']}"
    with pytest.raises(UnsafePathError, match=words) as caught:
        repo.read_manifest(first)
    assert str(caught.value).startswith(f"backup {first}: file list {files_rel}: ")
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
    _backup(repo, tmp_path)
    for call in (repo.read_manifest, repo.verify, repo.delete, lambda i: repo.restore(i, tmp_path / "t")):
        with pytest.raises(UnknownBackupError, match=f"backup 20000101T000000Z-00000000: no such backup in {repo.root}"):
            call("20000101T000000Z-00000000")
    with pytest.raises(BackupError, match="backup id '../../etc/passwd' is not valid"):
        repo.verify("../../etc/passwd")
    assert BackupRepository(tmp_path / "nothing-here").backup_ids() == []


def test_restore_never_overwrites(repo, tmp_path):
    result, _ = _backup(repo, tmp_path)
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
    _backup(repo, tmp_path)
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


def test_a_damaged_object_is_healed_by_the_next_backup_of_the_same_content(repo, tmp_path):
    result, files = _backup(repo, tmp_path)
    obj = _object_of(repo, result.manifest.backup_id, "quadra.db")
    os.chmod(obj, 0o644)
    os.truncate(obj, 10)
    _backup(repo, tmp_path, name="again")
    assert repo.verify(result.manifest.backup_id).ok


# Stat cache -------------------------------------------------------------------------------


def test_stat_cache_skips_unchanged_sources_and_notices_changes(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0)
    files = tree(0)
    sources = write_tree(tmp_path / "src", files)
    first = repo.create(sources, sources={}, use_stat_cache=True)
    assert first.files_read == len(files)
    second = repo.create(sources, sources={}, use_stat_cache=True)
    assert second.files_read == 0 and second.manifest.files == first.manifest.files
    # Same size, same mtime, different bytes: ctime still moves, so the file is read again.
    path = tmp_path / "src" / "quadra.db"
    st = path.stat()
    path.write_bytes(bytes(len(files["quadra.db"])))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = repo.create(sources, sources={}, use_stat_cache=True)
    assert third.files_read == 1
    entry = next(e for e in third.manifest.files if e.path == "quadra.db")
    assert entry.sha256 == hashlib.sha256(bytes(len(files["quadra.db"]))).hexdigest()
    assert repo.verify(third.manifest.backup_id).ok


def test_stat_cache_ignores_racy_and_damaged_entries(repo, tmp_path):
    sources = write_tree(tmp_path / "src", {"a": b"fresh"})
    repo.create(sources, sources={}, use_stat_cache=True)  # the file is younger than RACY_SECONDS: not cached
    assert repo.create(sources, sources={}, use_stat_cache=True).files_read == 1
    cache = repo.root / "cache" / "stat-cache.json"
    cache.write_text('{"version": 1, "entries": {"x": [1, 2, 3, 4, 5, "00"]}, "sha256": "bad"}')
    assert repo.create(sources, sources={}, use_stat_cache=True).files_read == 1


# Delete and gc ----------------------------------------------------------------------------


def test_delete_keeps_objects_until_gc(repo, tmp_path):
    first, files = _backup(repo, tmp_path, seed=0, name="a")
    second, _ = _backup(repo, tmp_path, seed=1, name="b")
    only_first = set(first.manifest.object_ids) - set(second.manifest.object_ids)
    only_first |= {first.manifest.files_object, first.manifest.checksums_object}  # its file list and checksum list
    repo.delete(first.manifest.backup_id)
    assert repo.backup_ids() == [second.manifest.backup_id]
    assert not repo.sidecar_path(first.manifest.backup_id).exists()
    assert all(repo.object_path(sha).exists() for sha in only_first)
    dry = repo.gc(dry_run=True)
    assert sorted(dry.removed) == sorted(f"objects/{s[:2]}/{s}" for s in only_first)
    assert dry.freed_bytes == sum(repo.object_path(s).stat().st_size for s in only_first)
    assert all(repo.object_path(sha).exists() for sha in only_first)
    done = repo.gc()
    assert done.removed == dry.removed and done.freed_bytes == dry.freed_bytes
    assert not any(repo.object_path(sha).exists() for sha in only_first)
    assert_untouched(repo, [second.manifest.backup_id])
    assert repo.gc().removed == []


def test_gc_refuses_when_it_cannot_tell_what_a_backup_references(repo, tmp_path):
    first, _ = _backup(repo, tmp_path)
    repo.manifest_path(first.manifest.backup_id).write_bytes(b"garbage")
    assert repo.gc().removed == []  # falls back to the sidecar's list
    repo.sidecar_path(first.manifest.backup_id).unlink()
    with pytest.raises(BackupError, match="neither its manifest nor its sidecar can be read; refusing to collect garbage"):
        repo.gc()
    assert all(repo.object_path(s).exists() for s in first.manifest.object_ids)


# Lock ---------------------------------------------------------------------------------------


def test_lock_is_reentrant_in_the_holding_thread_and_refused_to_others(repo, tmp_path):
    sources = write_tree(tmp_path / "src", {"a": b"a"})
    with repo.lock():
        result = repo.create(sources, sources={})  # create takes the lock again
        repo.delete(result.manifest.backup_id)
        repo.gc()
        seen = []

        def other_thread():
            try:
                with BackupRepository(repo.root).lock():
                    seen.append("acquired")
            except BackupLockedError as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert seen == [f"{repo.root}: is locked by another backup or restore (pid {os.getpid()})"]
    with repo.lock():
        pass
    assert (repo.root / ".lock").read_text().strip() == str(os.getpid())


def test_blocking_lock_waits_for_another_thread(repo):
    order = []
    held, release = threading.Event(), threading.Event()

    def holder():
        with repo.lock():
            order.append("held")
            held.set()
            release.wait(5)
            order.append("releasing")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with repo.lock(blocking=True):
        order.append("second")
    thread.join()
    assert order == ["held", "releasing", "second"]


# Staging ------------------------------------------------------------------------------------


def test_cleanup_staging_removes_dead_runs_only(repo, tmp_path):
    _backup(repo, tmp_path)
    dead = repo.staging_dir / "12345-deadbeef0000"
    dead.mkdir()
    (dead / "object-0").write_bytes(b"partial")
    external = tmp_path / ".target.restore-12345-deadbeef0000"
    external.mkdir()
    (dead / "external").write_text(f"{external}\n")
    (repo.staging_dir / "12345-deadbeef0000.lock").write_text("")
    stray = repo.staging_dir / "no-lock-run"
    stray.mkdir()
    with _fs.StagingRun(repo.staging_dir) as live:
        (live.dir / "object-0").write_bytes(b"in progress")
        assert repo.cleanup_staging() == 2
        assert sorted(os.listdir(repo.staging_dir)) == sorted([live.name, f"{live.name}.lock"])
        assert not external.exists()
    assert os.listdir(repo.staging_dir) == []


def test_verify_beside_a_concurrent_delete_and_gc_is_not_reported_as_damage(repo, tmp_path, monkeypatch):
    result, _ = _backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    original = repo._check_object

    def delete_then_check(sha, size):
        if repo.backup_ids():
            repo.delete(backup_id)  # another process's retention run, between two objects
            repo.gc()
        return original(sha, size)

    monkeypatch.setattr(repo, "_check_object", delete_then_check)
    with pytest.raises(UnknownBackupError, match=f"backup {backup_id}: deleted while it was being verified"):
        repo.verify(backup_id)
