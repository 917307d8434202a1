"""The repository (format 3): create, verify, restore, chunk-level dedup, sidecars, the stat
cache, delete, gc, the lock. Signatures and bad input (tampered chunks, manifests, file lists)
are in test_repository_tampering.py; the history the backups form (rollback, deleted or
replayed backups) in test_backup_history.py; format 2 in test_format2_compat.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest

from quadra_pipeline.backup import (
    BackupError,
    BackupLockedError,
    BackupRepository,
    SourceFile,
    UnknownBackupError,
    _fs,
    statcache,
)
from quadra_pipeline.backup.chunks import MINIMUM, ZSTD_MAGIC, decode
from quadra_pipeline.keys import generate

from .repository_helpers import (
    backup,
    stored_chunks,
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
    sha256sum_check,
    sha256sum_check_backup,
    tree,
    write_tree,
)


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
    result, files = backup(repo, tmp_path)
    target = tmp_path / "empty"
    target.mkdir()
    repo.restore(result.manifest.backup_id, target)
    assert read_tree(target) == files
    repo.restore(result.manifest.backup_id, tmp_path / "some", select=lambda path: path.startswith("models/"))
    assert read_tree(tmp_path / "some") == {k: v for k, v in files.items() if k.startswith("models/")}


def test_chunks_are_named_by_their_content_and_compressed_only_where_it_pays(repo, tmp_path):
    text = b"".join(b"row %06d: the same kind of line, again and again\n" % i for i in range(60_000))  # ~3 MB
    noise = os.urandom(3 << 20)
    # Raw bytes that look like a zstd frame, shorter than the smallest chunk: always one chunk
    # (100 kB of random bytes were cut in two in 140 of 2,000 tries: 7% of runs failed).
    magic = ZSTD_MAGIC + os.urandom(MINIMUM - 1000)
    result = repo.create(write_tree(tmp_path / "src", {"text.txt": text, "noise.bin": noise, "magic.bin": magic}), sources={})
    stored = stored_chunks(repo)
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
    result, _ = backup(repo, tmp_path)
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
    result, _ = backup(repo, tmp_path)
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
    chunks = sorted(stored_chunks(repo))
    second = repo.create(sources, sources={"hour": 0})
    assert second.stored_bytes == 0 and second.added_chunks == []
    assert second.manifest.header.files_object == first.header.files_object
    assert sorted(stored_chunks(repo)) == chunks
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
    first, _ = backup(repo, tmp_path, seed=0, name="a")
    second, _ = backup(repo, tmp_path, seed=1, name="b")
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
    first, _ = backup(repo, tmp_path)
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
    backup(repo, tmp_path)
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
    result, _ = backup(repo, tmp_path)
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
    result, _ = backup(repo, tmp_path)
    assert BackupRepository(repo.root, keys=VERIFY_ONLY, hmac_key="another").verify(result.manifest.backup_id).ok
    assert BackupRepository(repo.root, keys=VERIFY_ONLY, hmac_key=KEY).verify(result.manifest.backup_id).ok
