"""The repository (format 3): create, verify, restore, chunk-level dedup, sidecars, signatures,
delete, gc, and bad input (chunks, the manifest, its file list). The history the backups form
(rollback, deleted or replayed backups) is in test_backup_history.py; format 2 in test_format2_compat.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
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
    _fs,
    statcache,
)
from quadra_pipeline.backup.chunks import ZSTD_MAGIC, decode
from quadra_pipeline.keys import generate

from .test_repository_helpers import (
    KEY,
    SIGNING,
    VERIFY_ONLY,
    assert_untouched,
    chunks_of,
    disk_bytes,
    file_list_of,
    flip_byte,
    hand_check_signature,
    hand_check_tree,
    read_tree,
    repo,  # noqa: F401  (fixture)
    rewrite_manifest,
    sha256sum_check,
    sha256sum_check_backup,
    tree,
    write_tree,
)


def _backup(repo: BackupRepository, tmp_path: Path, seed: int = 0, name: str = "src", **kwargs):
    files = tree(seed)
    sources = write_tree(tmp_path / name, files)
    return repo.create(sources, sources={"seed": seed, "mlflow": "3.17.0"}, **kwargs), files


def _stored_chunks(repo: BackupRepository) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in repo.chunks.dir.rglob("*") if p.is_file()}


# Round trip -------------------------------------------------------------------------------


def test_create_verify_restore_round_trip(repo, tmp_path):
    files = tree(0)
    sources = write_tree(tmp_path / "src", files)
    sources[0] = SourceFile(sources[0].path, sources[0].source, 0o600)
    result = repo.create(sources, sources={"mlflow": "3.17.0"})
    manifest = result.manifest
    assert manifest.format_version == 3
    assert result.file_count == len(files) == len(manifest.files)
    assert result.total_bytes == sum(map(len, files.values())) == manifest.total_bytes
    # Random content does not compress: stored as it is, the copy of the champion not at all.
    assert result.stored_bytes == sum(len(v) for k, v in files.items() if k != "models/copy-of-champion.pt")
    assert result.manifest_sha256 == hashlib.sha256(repo.manifest_path(manifest.backup_id).read_bytes()).hexdigest()
    assert repo.manifest_sha256(manifest.backup_id) == result.manifest_sha256
    assert manifest.signature is not None and manifest.signature["algorithm"] == "ed25519"
    assert manifest.sources == {"mlflow": "3.17.0"}
    assert repo.backup_ids() == [manifest.backup_id]
    assert repo.read_manifest(manifest.backup_id) == manifest

    report = repo.verify(manifest.backup_id)
    assert report.ok and report.problems == []
    assert report.files_checked == len(files) and report.chunks_read == report.chunks_checked == len(manifest.chunks)
    assert report.bytes_checked == result.stored_bytes
    assert repo.history_problems() == []

    target = tmp_path / "restored" / "home"
    assert repo.restore(manifest.backup_id, target) == manifest
    assert read_tree(target) == files
    assert stat.S_IMODE((target / sources[0].path).stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "quadra.db").stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["home"]  # no staging left
    assert os.listdir(repo.staging_dir) == []


def test_restore_into_an_existing_empty_directory_and_only_selected_files(repo, tmp_path):
    result, files = _backup(repo, tmp_path)
    target = tmp_path / "empty"
    target.mkdir()
    repo.restore(result.manifest.backup_id, target)
    assert read_tree(target) == files
    repo.restore(result.manifest.backup_id, tmp_path / "some", select=lambda path: path.startswith("models/"))
    assert read_tree(tmp_path / "some") == {k: v for k, v in files.items() if k.startswith("models/")}


def test_chunks_are_named_by_their_content_and_compressed_only_where_it_pays(repo, tmp_path):
    text = b"".join(b"row %06d: the same kind of line, again and again\n" % i for i in range(60_000))  # ~3 MB
    noise = os.urandom(3 << 20)
    magic = ZSTD_MAGIC + os.urandom(100_000)  # raw bytes that look like a zstd frame
    result = repo.create(write_tree(tmp_path / "src", {"text.txt": text, "noise.bin": noise, "magic.bin": magic}), sources={})
    stored = _stored_chunks(repo)
    by_file = {e.path: e for e in result.manifest.files}
    for name, sha_data in stored.items():
        assert hashlib.sha256(decode(sha_data, -1, name)).hexdigest() == name
    text_chunks = [stored[sha] for sha, _, _ in by_file["text.txt"].chunks]
    assert all(c[:4] == ZSTD_MAGIC for c in text_chunks) and sum(map(len, text_chunks)) < len(text) / 5
    noise_chunks = [stored[sha] for sha, _, _ in by_file["noise.bin"].chunks]
    assert all(c[:4] != ZSTD_MAGIC for c in noise_chunks) and sum(map(len, noise_chunks)) == len(noise)
    [(sha, _, _)] = by_file["magic.bin"].chunks
    assert stored[sha][:4] == ZSTD_MAGIC and decode(stored[sha], len(magic), sha) == magic  # never ambiguous
    # Content-defined: chunks of 64 KiB..1 MiB, about 256 KiB on average.
    lengths = [length for e in result.manifest.files for _, length, _ in e.chunks]
    inner = [length for e in result.manifest.files for _, length, _ in e.chunks[:-1]]  # a file's last chunk may be short
    assert all(64 << 10 <= n <= 1 << 20 for n in inner)
    assert 128 << 10 < sum(lengths) / len(lengths) < 512 << 10
    document = json.loads(repo.manifest_path(result.manifest.backup_id).read_bytes())
    assert "files" not in document and document["chunk_count"] == len(stored)
    assert json.loads(repo.object_path(document["files_object"]).read_bytes()) == [e.to_dict() for e in result.manifest.files]


def test_sidecar_and_the_documented_check_by_hand_with_the_real_tools(repo, tmp_path):
    result, _ = _backup(repo, tmp_path)
    backup_id, manifest = result.manifest.backup_id, result.manifest
    files_rel = f"objects/{manifest.header.files_object[:2]}/{manifest.header.files_object}"
    assert repo.sidecar_path(backup_id).read_text().splitlines() == [
        f"{result.manifest_sha256}  manifests/{backup_id}.json",
        f"{manifest.header.files_object}  {files_rel}",
    ]
    assert file_list_of(repo.root, backup_id) == files_rel
    checked = sha256sum_check_backup(repo.root, backup_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 2 + len(manifest.chunks)
    moved = tmp_path / "elsewhere" / "copy"  # the paths are relative to the repository root
    shutil.copytree(repo.root, moved)
    assert sha256sum_check_backup(moved, backup_id).returncode == 0
    chunk = next(iter(sorted(manifest.chunks)))
    flip_byte(moved / "chunks" / chunk[:2] / chunk, 7)
    failed = sha256sum_check_backup(moved, backup_id)
    assert failed.returncode != 0 and f"chunks/{chunk[:2]}/{chunk}: FAILED" in failed.stdout
    flip_byte(moved / files_rel, 3)
    assert sha256sum_check(moved, f"manifests/{backup_id}.sha256").returncode != 0


def test_signatures_and_a_restored_tree_checked_by_hand_with_openssl_and_sha256sum(repo, tmp_path):
    """The checks docs/BACKUP_FORMAT.md gives an off-site verifier: the public key alone, the
    standard library's json and openssl verify the manifest and the head; jq and sha256sum
    check a restored tree against the file list."""
    result, _ = _backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    public = tmp_path / "backup.pub"
    public.write_bytes(SIGNING.public_pem)
    work = tmp_path / "work"
    work.mkdir()
    for document in (repo.manifest_path(backup_id), repo.history.head_path):
        checked = hand_check_signature(document, public, work)
        assert checked.returncode == 0 and "Signature Verified Successfully" in checked.stdout, checked.stderr
    other = tmp_path / "other.pub"
    other.write_bytes(generate("ed25519").public_pem)
    assert hand_check_signature(repo.manifest_path(backup_id), other, work).returncode != 0
    forged = tmp_path / "forged.json"
    forged.write_text(repo.manifest_path(backup_id).read_text().replace('"file_count": ', '"file_count": 1'))
    assert hand_check_signature(forged, public, work).returncode != 0

    restored = tmp_path / "restored"
    repo.restore(backup_id, restored)
    file_list = repo.object_path(result.manifest.header.files_object)
    checked = hand_check_tree(file_list, restored)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == len(result.manifest.files), checked.stderr
    victim = restored / result.manifest.files[0].path
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes() + b"!")
    assert hand_check_tree(file_list, restored).returncode != 0


def test_unchanged_backups_share_every_chunk_and_the_file_list(repo, tmp_path):
    sources = write_tree(tmp_path / "src", tree(0))
    first = repo.create(sources, sources={"hour": 0}).manifest
    chunks = sorted(_stored_chunks(repo))
    second = repo.create(sources, sources={"hour": 0})
    assert second.stored_bytes == 0 and second.added_chunks == []
    assert second.manifest.header.files_object == first.header.files_object
    assert sorted(_stored_chunks(repo)) == chunks
    repo.delete(first.backup_id)
    repo.gc()
    assert_untouched(repo, [second.manifest.backup_id])


def test_24_unchanged_backups_take_at_most_1_05x_the_bytes_of_one(repo, tmp_path):
    files = tree(1, scale=40)  # about 11 MB
    sources = write_tree(tmp_path / "src", files)
    repo.create(sources, sources={"hour": 0})
    one = disk_bytes(repo.root)
    for hour in range(1, 24):
        assert repo.create(sources, sources={"hour": hour}).stored_bytes == 0
    assert len(repo.backup_ids()) == 24
    all_24 = disk_bytes(repo.root)
    assert all_24 <= 1.05 * one, f"{all_24} bytes for 24 backups, {one} for one ({all_24 / one:.3f}x)"


def test_a_few_changed_rows_of_a_database_store_a_few_chunks(repo, tmp_path):
    """A 20 MB SQLite database, 5 rows changed far apart: about what changed is stored again."""
    db = tmp_path / "src" / "quadra.db"
    db.parent.mkdir()
    connection = sqlite3.connect(db)
    connection.execute("create table t (id integer primary key, payload blob)")
    connection.executemany("insert into t values (?, ?)", ((i, os.urandom(1000)) for i in range(20_000)))
    connection.commit()
    first = repo.create([SourceFile("quadra.db", db)], sources={})
    for row in (10, 5_000, 9_000, 14_000, 19_990):
        connection.execute("update t set payload = ? where id = ?", (os.urandom(1000), row))
    connection.commit()
    connection.close()
    second = repo.create([SourceFile("quadra.db", db)], sources={})
    assert first.stored_bytes > 19e6
    assert second.stored_bytes <= 12 * (1 << 20) / 4, second.stored_bytes  # a handful of ~256 KiB chunks, not 20 MB
    restored = tmp_path / "restored"
    repo.restore(second.manifest.backup_id, restored)
    assert (restored / "quadra.db").read_bytes() == db.read_bytes()


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


def test_empty_backup_and_empty_files(repo, tmp_path):
    result = repo.create([], sources={"note": "nothing"})
    assert repo.verify(result.manifest.backup_id).ok
    repo.restore(result.manifest.backup_id, tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []
    result = repo.create(write_tree(tmp_path / "src", {"empty": b""}), sources={})
    assert result.manifest.files[0].chunks == ()
    repo.restore(result.manifest.backup_id, tmp_path / "u")
    assert read_tree(tmp_path / "u") == {"empty": b""}


# Signatures -------------------------------------------------------------------------------


def test_signatures_required_in_production_optional_elsewhere(tmp_path):
    with pytest.raises(BackupError, match="signed backups are required but no backup signing key is configured"):
        BackupRepository(tmp_path / "r", require_signature=True)
    with pytest.raises(BackupError, match="signed backups are required"):
        BackupRepository(tmp_path / "r", keys=VERIFY_ONLY, require_signature=True)  # a public key cannot sign
    development = BackupRepository(tmp_path / "r")
    sources = write_tree(tmp_path / "src", {"a": b"a"})
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
    result, _ = _backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    offsite = BackupRepository(repo.root, keys=VERIFY_ONLY)  # cannot sign ...
    assert offsite.verify(backup_id).ok and offsite.history_problems() == []  # ... and needs nothing else
    with pytest.raises(BackupError, match="no backup signing key"):
        BackupRepository(repo.root, keys=VERIFY_ONLY, require_signature=True)
    other = BackupRepository(repo.root, keys=generate("ed25519"))
    [problem] = other.verify(backup_id).problems
    assert problem.startswith(f"manifests/{backup_id}.json is signed with another key (")


def test_a_stripped_signature_with_its_sidecar_recomputed_is_refused(repo, tmp_path):
    """Outside production too: the forger removes the signature and fixes the sidecar."""
    result, _ = _backup(repo, tmp_path)
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
    result, _ = _backup(repo, tmp_path)
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
    first, _ = _backup(repo, tmp_path)
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


# Stat cache -------------------------------------------------------------------------------


def test_stat_cache_skips_unchanged_sources_and_notices_changes(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0)
    files = tree(0)
    sources = write_tree(tmp_path / "src", files)
    first = repo.create(sources, sources={}, use_stat_cache=True)
    assert first.files_read == len(files)
    second = repo.create(sources, sources={}, use_stat_cache=True)
    assert second.files_read == 0 and second.manifest.files == first.manifest.files
    path = tmp_path / "src" / "quadra.db"  # same size and mtime, other bytes: ctime still moves
    st = path.stat()
    path.write_bytes(bytes(len(files["quadra.db"])))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = repo.create(sources, sources={}, use_stat_cache=True)
    assert third.files_read == 1
    entry = next(e for e in third.manifest.files if e.path == "quadra.db")
    assert entry.sha256 == hashlib.sha256(bytes(len(files["quadra.db"]))).hexdigest()
    assert repo.verify(third.manifest.backup_id).ok
    # A chunk that went missing is not trusted to the cache: the file is read (and stored) again.
    chunks_of(repo, third.manifest.backup_id, "models/champion.pt")[0].unlink()
    fourth = repo.create(sources, sources={}, use_stat_cache=True)
    assert fourth.files_read >= 1 and repo.verify(fourth.manifest.backup_id).ok


def test_stat_cache_ignores_racy_and_damaged_entries(repo, tmp_path):
    sources = write_tree(tmp_path / "src", {"a": b"fresh"})
    repo.create(sources, sources={}, use_stat_cache=True)  # the file is younger than RACY_SECONDS: not cached
    assert repo.create(sources, sources={}, use_stat_cache=True).files_read == 1
    cache = repo.root / "cache" / "stat-cache.json"
    cache.write_text('{"version": 1, "entries": {"x": [1, 2, 3, 4, 5, "00"]}, "sha256": "bad"}')
    assert repo.create(sources, sources={}, use_stat_cache=True).files_read == 1


# Delete and gc ----------------------------------------------------------------------------


def test_delete_keeps_chunks_until_gc(repo, tmp_path):
    first, _ = _backup(repo, tmp_path, seed=0, name="a")
    second, _ = _backup(repo, tmp_path, seed=1, name="b")
    only_first = [f"chunks/{s[:2]}/{s}" for s in set(first.manifest.chunks) - set(second.manifest.chunks)]
    only_first.append(f"objects/{first.manifest.header.files_object[:2]}/{first.manifest.header.files_object}")
    repo.delete(first.manifest.backup_id)
    assert repo.backup_ids() == [second.manifest.backup_id]
    assert not repo.sidecar_path(first.manifest.backup_id).exists()
    assert all((repo.root / rel).exists() for rel in only_first)
    dry = repo.gc(dry_run=True)
    assert sorted(dry.removed) == sorted(only_first)
    assert dry.freed_bytes == sum((repo.root / rel).stat().st_size for rel in only_first)
    done = repo.gc()
    assert done.removed == dry.removed and done.freed_bytes == dry.freed_bytes
    assert not any((repo.root / rel).exists() for rel in only_first)
    assert_untouched(repo, [second.manifest.backup_id])
    assert repo.gc().removed == []


def test_gc_refuses_when_it_cannot_tell_what_a_backup_references(repo, tmp_path):
    first, _ = _backup(repo, tmp_path)
    repo.manifest_path(first.manifest.backup_id).write_bytes(b"garbage")
    assert repo.gc().removed == []  # falls back to the sidecar's list
    repo.sidecar_path(first.manifest.backup_id).unlink()
    with pytest.raises(BackupError, match="neither its manifest nor its sidecar can be read; refusing to collect garbage"):
        repo.gc()
    assert all(repo.chunks.path(c).exists() for c in first.manifest.chunks)


# Lock and staging ------------------------------------------------------------------------------


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


def test_cleanup_staging_removes_dead_runs_only(repo, tmp_path):
    _backup(repo, tmp_path)
    dead = repo.staging_dir / "12345-deadbeef0000"
    dead.mkdir()
    (dead / "chunk-0").write_bytes(b"partial")
    external = tmp_path / ".target.restore-12345-deadbeef0000"
    external.mkdir()
    (dead / "external").write_text(f"{external}\n")
    (repo.staging_dir / "12345-deadbeef0000.lock").write_text("")
    stray = repo.staging_dir / "no-lock-run"
    stray.mkdir()
    with _fs.StagingRun(repo.staging_dir) as live:
        (live.dir / "chunk-0").write_bytes(b"in progress")
        assert repo.cleanup_staging() == 2
        assert sorted(os.listdir(repo.staging_dir)) == sorted([live.name, f"{live.name}.lock"])
        assert not external.exists()
    assert os.listdir(repo.staging_dir) == []


def test_verify_beside_a_concurrent_delete_and_gc_is_not_reported_as_damage(repo, tmp_path, monkeypatch):
    result, _ = _backup(repo, tmp_path)
    backup_id = result.manifest.backup_id
    original = repo.chunks.problem

    def delete_then_check(sha, stored, *, read):
        if repo.backup_ids():
            repo.delete(backup_id)  # another process's retention run, between two chunks
            repo.gc()
        return original(sha, stored, read=read)

    monkeypatch.setattr(repo.chunks, "problem", delete_then_check)
    with pytest.raises(UnknownBackupError, match=f"backup {backup_id}: deleted while it was being verified"):
        repo.verify(backup_id)


def test_hmac_key_is_for_format_2_only(repo, tmp_path):
    """QUADRA_SECRET_KEY still verifies format-2 backups; format 3 never uses it."""
    result, _ = _backup(repo, tmp_path)
    assert BackupRepository(repo.root, keys=VERIFY_ONLY, hmac_key="another").verify(result.manifest.backup_id).ok
    assert BackupRepository(repo.root, keys=VERIFY_ONLY, hmac_key=KEY).verify(result.manifest.backup_id).ok
