"""Export and import: one portable tar + `sha256sum` sidecar; hostile archives are refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from quadra_pipeline.backup import (
    BackupError,
    BackupRepository,
    IntegrityError,
    UnsafePathError,
)
from quadra_pipeline.backup.format3 import Header, sidecar_text
from quadra_pipeline.backup.signatures import SignaturePolicy
from quadra_pipeline.keys import generate

from .repository_helpers import (
    KEY,
    SIGNING,
    assert_untouched,
    chunks_of,
    disk_bytes,
    flip_byte,
    read_tree,
    sha256sum_check,
    sha256sum_check_backup,
    tree,
    write_tree,
)


@pytest.fixture
def exported(repo, tmp_path):
    files = tree(0)
    backup_id = repo.create(write_tree(tmp_path / "src", files), sources={"v": 1}).manifest.backup_id
    out_dir = tmp_path / "offsite"
    out_dir.mkdir()
    archive = repo.export(backup_id, out_dir / "backup.tar")
    return backup_id, archive, files


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _fresh(tmp_path: Path, keys=SIGNING) -> BackupRepository:
    fresh = BackupRepository(tmp_path / "fresh", keys=keys, hmac_key=KEY, require_signature=True)
    fresh.create([], sources={})  # the repository exists and holds one backup already
    return fresh


# Round trip -------------------------------------------------------------------------------


def test_export_writes_one_archive_and_a_relative_sha256_sidecar(repo, exported, tmp_path):
    backup_id, archive, files = exported
    assert archive == tmp_path / "offsite" / "backup.tar"
    assert sorted(os.listdir(archive.parent)) == ["backup.tar", "backup.tar.sha256"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (archive.parent / "backup.tar.sha256").read_text() == f"{digest}  backup.tar\n"
    checked = sha256sum_check(archive.parent, "backup.tar.sha256")
    assert checked.returncode == 0 and checked.stdout.strip() == "backup.tar: OK"
    moved = tmp_path / "somewhere" / "else"
    moved.mkdir(parents=True)
    for name in ("backup.tar", "backup.tar.sha256"):
        shutil.copy(archive.parent / name, moved / name)
    assert sha256sum_check(moved, "backup.tar.sha256").returncode == 0

    names = [m.name for m, _ in _members(archive)]
    manifest = repo.read_manifest(backup_id)
    files_object = manifest.header.files_object
    assert names[:3] == [
        f"manifests/{backup_id}.json",
        f"manifests/{backup_id}.sha256",
        f"objects/{files_object[:2]}/{files_object}",
    ]
    assert names[3:] == [f"chunks/{s[:2]}/{s}" for s in sorted(manifest.chunks)]
    # Extracted with plain tar, it is a repository the documented check by hand passes on.
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(extracted)], check=True)
    checked = sha256sum_check_backup(extracted, backup_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 2 + len(manifest.chunks)
    assert BackupRepository(extracted, keys=SIGNING, require_signature=True).verify(backup_id).ok


def test_import_restores_the_same_tree(exported, tmp_path):
    backup_id, archive, files = exported
    fresh = _fresh(tmp_path)
    manifest = fresh.import_archive(archive)
    assert manifest.backup_id == backup_id
    assert backup_id in fresh.backup_ids()
    assert fresh.verify(backup_id).ok
    assert fresh.history_problems() == []  # recorded as imported: its predecessors are not here
    fresh.restore(backup_id, tmp_path / "restored")
    assert read_tree(tmp_path / "restored") == files
    assert os.listdir(fresh.staging_dir) == []
    # Into an empty repository (a new machine), it becomes the head the next backup extends.
    empty = BackupRepository(tmp_path / "new-machine", keys=SIGNING, require_signature=True)
    empty.import_archive(archive)
    nxt = empty.create(write_tree(tmp_path / "again", files), sources={}).manifest
    assert nxt.header.previous.backup_id == backup_id and empty.history_problems() == []


def test_import_deduplicates_and_is_idempotent(repo, exported, tmp_path):
    backup_id, archive, _ = exported
    before = disk_bytes(repo.chunks.dir)
    assert repo.import_archive(archive).backup_id == backup_id  # already there, same manifest: nothing to do
    assert disk_bytes(repo.chunks.dir) == before
    other = BackupRepository(tmp_path / "other", keys=SIGNING, require_signature=True)
    other.import_archive(archive)
    other.import_archive(archive)
    assert_untouched(other, [backup_id])


def test_export_is_deterministic_and_never_overwrites(repo, exported, tmp_path):
    backup_id, archive, _ = exported
    again = repo.export(backup_id, tmp_path / "again.tar")
    assert again.read_bytes() == archive.read_bytes()
    with pytest.raises(BackupError, match=f"{archive}: already exists; refusing to overwrite it"):
        repo.export(backup_id, archive)
    in_dir = repo.export(backup_id, tmp_path / "offsite")  # a directory: <dir>/<id>.tar
    assert in_dir == tmp_path / "offsite" / f"{backup_id}.tar"
    (tmp_path / "lonely.tar.sha256").write_text("x")
    with pytest.raises(BackupError, match="lonely.tar.sha256: already exists"):
        repo.export(backup_id, tmp_path / "lonely.tar")
    assert not (tmp_path / "lonely.tar").exists()


def test_export_of_a_corrupt_backup_is_refused_and_leaves_nothing(repo, exported, tmp_path):
    backup_id, _, _ = exported
    manifest = repo.read_manifest(backup_id)
    largest = max(manifest.files, key=lambda e: e.size)
    flip_byte(chunks_of(repo, backup_id, largest.path)[0], 5)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match=f"backup {backup_id} cannot be exported, nothing was written: 1 problem: .* is corrupt"):
        repo.export(backup_id, out / "x.tar")
    assert os.listdir(out) == []
    assert os.listdir(repo.staging_dir) == []


# Damaged archives -------------------------------------------------------------------------


def test_archive_that_does_not_match_its_sidecar(exported, tmp_path):
    _, archive, _ = exported
    flip_byte(archive, archive.stat().st_size // 2)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(IntegrityError) as caught:
        fresh.import_archive(archive)
    assert str(caught.value) == (
        f"{archive}: does not match its sidecar backup.tar.sha256 (archive corrupt or altered); nothing was imported"
    )
    assert _listing(fresh.root) == before


def _largest_object(members) -> int:
    return max(range(len(members)), key=lambda i: members[i][0].size if members[i][0].name.startswith("chunks/") else -1)


def test_flipped_byte_in_an_object_of_an_archive_without_sidecar(exported, tmp_path):
    _, archive, _ = exported
    (archive.parent / "backup.tar.sha256").unlink()
    members = _members(archive)
    index = _largest_object(members)
    info, data = members[index]
    members[index] = (info, bytes([data[0] ^ 1]) + data[1:])
    damaged = _write_tar(tmp_path / "damaged.tar", members)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(IntegrityError, match=f"{damaged} cannot be imported, nothing was added: 1 problem: {info.name} is corrupt: its content hashes to"):
        fresh.import_archive(damaged)
    assert _listing(fresh.root) == before


def test_truncated_archive(exported, tmp_path):
    _, archive, _ = exported
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(IntegrityError, match=f"{cut}"):
        fresh.import_archive(cut)
    assert _listing(fresh.root) == before
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(IntegrityError, match="not a readable backup archive"):
        fresh.import_archive(tmp_path / "empty.tar")
    with pytest.raises(BackupError, match="no such archive"):
        fresh.import_archive(tmp_path / "missing.tar")


def test_archive_missing_an_object(exported, tmp_path):
    _, archive, _ = exported
    members = _members(archive)
    dropped = members.pop()[0].name
    partial = _write_tar(tmp_path / "partial.tar", members)
    with pytest.raises(IntegrityError, match=f"{dropped} is missing from the archive"):
        _fresh(tmp_path).import_archive(partial)


def test_archive_signed_with_another_key_is_refused(exported, tmp_path):
    _, archive, _ = exported
    other = _fresh(tmp_path, keys=generate("ed25519"))
    before = _listing(other.root)
    with pytest.raises(IntegrityError, match="is signed with another key"):
        other.import_archive(archive)
    assert _listing(other.root) == before


def test_import_never_overwrites_a_different_backup_with_the_same_id(repo, exported, tmp_path):
    backup_id, archive, _ = exported
    fresh = _fresh(tmp_path)
    sources = write_tree(tmp_path / "other", {"x": b"other content"})
    fresh.create(sources, sources={}, backup_id=backup_id)
    original = fresh.manifest_path(backup_id).read_bytes()
    with pytest.raises(BackupError, match=f"backup {backup_id} already exists in .* with a different manifest; refusing to overwrite it"):
        fresh.import_archive(archive)
    assert fresh.manifest_path(backup_id).read_bytes() == original
    assert fresh.verify(backup_id).ok


def test_manifest_renamed_inside_the_archive(exported, tmp_path):
    backup_id, archive, _ = exported
    members = _members(archive)
    new_id = "20991231T000000Z-ffffffff"
    for info, _ in members[:2]:
        info.name = info.name.replace(backup_id, new_id)
    renamed = _write_tar(tmp_path / "renamed.tar", members)
    with pytest.raises(IntegrityError, match=f"holds backup '{backup_id}', not '{new_id}'"):
        _fresh(tmp_path).import_archive(renamed)


# Hostile archives: crafted with tarfile -----------------------------------------------------


def _hostile(exported, tmp_path, extra: tarfile.TarInfo, data: bytes | None = None, *, first: bool = False) -> Path:
    _, archive, _ = exported
    members = _members(archive)
    members.insert(0 if first else len(members), (extra, data))
    return _write_tar(tmp_path / "hostile.tar", members)


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


HOSTILE = [
    ("../../escaped.txt", tarfile.REGTYPE, "", UnsafePathError, "contains '..'"),
    ("objects/../../escaped.txt", tarfile.REGTYPE, "", UnsafePathError, "contains '..'"),
    ("/tmp/escaped-absolute.txt", tarfile.REGTYPE, "", UnsafePathError, "has an absolute path"),
    ("objects/ab/link", tarfile.SYMTYPE, "/etc/passwd", UnsafePathError, "is a symlink \\(to '/etc/passwd'\\)"),
    ("manifests/evil.json", tarfile.SYMTYPE, "../../x", UnsafePathError, "is a symlink"),
    ("objects/ab/hard", tarfile.LNKTYPE, "/etc/passwd", UnsafePathError, "is a hard link"),
    ("objects/ab/dev", tarfile.CHRTYPE, "", UnsafePathError, "is a device"),
    ("objects/ab/blk", tarfile.BLKTYPE, "", UnsafePathError, "is a device"),
    ("objects/ab/fifo", tarfile.FIFOTYPE, "", UnsafePathError, "is not a regular file"),
    ("README", tarfile.REGTYPE, "", BackupError, "unexpected member 'README'"),
    ("objects/zz/" + "0" * 64, tarfile.REGTYPE, "", BackupError, "unexpected member"),
    ("chunks/ab/link", tarfile.SYMTYPE, "/etc/passwd", UnsafePathError, "is a symlink"),
    ("chunks/../escaped.txt", tarfile.REGTYPE, "", UnsafePathError, "contains '..'"),
    ("chunks/zz/" + "0" * 64, tarfile.REGTYPE, "", BackupError, "unexpected member"),
]


@pytest.mark.parametrize(("name", "kind", "link", "error", "words"), HOSTILE, ids=[h[0] + "-" + h[1].decode() for h in HOSTILE])
@pytest.mark.parametrize("first", [True, False], ids=["first", "last"])
def test_hostile_members_are_refused(exported, tmp_path, name, kind, link, error, words, first):
    data = b"evil" if kind == tarfile.REGTYPE else None
    hostile = _hostile(exported, tmp_path, _info(name, kind, link), data, first=first)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(error, match=words) as caught:
        fresh.import_archive(hostile)
    assert str(caught.value).startswith(f"{hostile}: ")
    assert _listing(fresh.root) == before
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-absolute.txt").exists()


def _set_manifest(members, document: dict, *, sign: bool) -> None:
    """The archive's manifest (canonical; signed with the real key when `sign`) and its sidecar."""
    body = {k: v for k, v in document.items() if k != "signature" or not sign}
    if sign:
        body = SignaturePolicy(keys=SIGNING).sign(body)
    header = Header.from_document(body)
    data = header.to_json()
    members[0] = (members[0][0], data)
    members[1] = (members[1][0], sidecar_text(header, hashlib.sha256(data).hexdigest()))


def _file_list(entries) -> bytes:
    return b"[\n" + b",\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in entries) + b"\n]\n"


def _object_member(data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    sha = hashlib.sha256(data).hexdigest()
    return _info(f"objects/{sha[:2]}/{sha}"), data


@pytest.mark.parametrize(("path", "words"), [("../../escaped.txt", "contains '..'"), ("/tmp/escaped.txt", "absolute path")])
def test_validly_signed_manifest_with_an_unsafe_path_inside_an_archive(exported, tmp_path, path, words):
    backup_id, archive, _ = exported
    members = _members(archive)
    document = json.loads(members[0][1])
    entries = json.loads(members[2][1])  # the file list
    entries[0]["path"] = path
    file_list = _file_list(entries)
    members.append(_object_member(file_list))
    document["files_object"] = hashlib.sha256(file_list).hexdigest()
    _set_manifest(members, document, sign=True)
    hostile = _write_tar(tmp_path / "hostile.tar", members)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(UnsafePathError, match=words) as caught:
        fresh.import_archive(hostile)
    rel = f"objects/{document['files_object'][:2]}/{document['files_object']}"
    assert str(caught.value).startswith(f"{hostile}: backup {backup_id}: file list {rel}: ")
    assert _listing(fresh.root) == before


@pytest.mark.parametrize(("index", "which"), [(2, "file list")])
def test_archive_missing_a_metadata_object(exported, tmp_path, index, which):
    _, archive, _ = exported
    members = _members(archive)
    dropped = members.pop(index)[0].name
    partial = _write_tar(tmp_path / "partial.tar", members)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(IntegrityError, match=f"{partial} cannot be imported, nothing was added: 1 problem: {which} {dropped} is missing from the archive"):
        fresh.import_archive(partial)
    assert _listing(fresh.root) == before


def test_archive_with_a_corrupt_file_list(exported, tmp_path):
    _, archive, _ = exported
    members = _members(archive)
    info, data = members[2]
    members[2] = (info, data.replace(b'"size":', b'"size": ', 1))
    damaged = _write_tar(tmp_path / "damaged.tar", members)
    with pytest.raises(IntegrityError) as caught:
        _fresh(tmp_path).import_archive(damaged)
    assert caught.value.problems == [f"{info.name} is corrupt: its content hashes to {hashlib.sha256(members[2][1]).hexdigest()[:12]}..., not its name"]


def test_archive_whose_manifest_points_to_another_file_list(repo, exported, tmp_path):
    """The archive carries a second, properly stored file list (one file dropped), and the
    manifest (old signature kept) and sidecar are pointed at it."""
    backup_id, archive, _ = exported
    members = _members(archive)
    document = json.loads(members[0][1])
    entries = [e for e in json.loads(members[2][1]) if e["path"] != "quadra.db"]
    file_list = _file_list(entries)
    document.update(files_object=hashlib.sha256(file_list).hexdigest(), file_count=len(entries),
                    total_bytes=sum(e["size"] for e in entries), chunk_count=len({c[0] for e in entries for c in e["chunks"]}))
    _set_manifest(members, document, sign=False)
    members[2] = _object_member(file_list)
    forged = _write_tar(tmp_path / "forged.tar", members)
    fresh = _fresh(tmp_path)
    before = _listing(fresh.root)
    with pytest.raises(IntegrityError, match="signature does not match") as caught:
        fresh.import_archive(forged)
    assert any("is in the archive but the manifest does not name it" in p for p in caught.value.problems)  # the dropped file's object
    assert _listing(fresh.root) == before


# Full disks ---------------------------------------------------------------------------------


def test_import_onto_a_full_disk_adds_nothing(small_disk, tmp_path):
    source = BackupRepository(tmp_path / "source")
    big = source.create(write_tree(tmp_path / "src", {"big.bin": os.urandom(3 << 20)}), sources={}).manifest.backup_id
    archive = source.export(big, tmp_path / "big.tar")
    target = BackupRepository(small_disk / "repo")
    first = target.create(write_tree(tmp_path / "small", {"a": b"a"}), sources={}).manifest.backup_id
    before = _listing(target.root)
    with pytest.raises(BackupError, match=f"{target.root}: cannot import {archive}: No space left on device; nothing was added"):
        target.import_archive(archive)
    assert _listing(target.root) == before
    assert_untouched(target, [first])


def test_export_onto_a_full_disk_leaves_no_partial_archive(small_disk, tmp_path):
    repo = BackupRepository(tmp_path / "repo")
    backup_id = repo.create(write_tree(tmp_path / "src", {"big.bin": os.urandom(3 << 20)}), sources={}).manifest.backup_id
    with pytest.raises(BackupError, match=f"{small_disk / 'x.tar'}: cannot write the archive: No space left on device"):
        repo.export(backup_id, small_disk / "x.tar")
    assert os.listdir(small_disk) == []
    assert os.listdir(repo.staging_dir) == []
