"""The off-site copy: pushed incrementally, verified with the public key alone, pruned by the
signed records, restored from when the local repository is gone; a tampered copy refused. On a
folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from quadra_pipeline.backup import BackupRepository, IntegrityError, offsite
from quadra_pipeline.backup.chunks import chunk_relpath
from quadra_pipeline.objectstore import LocalObjectStore, open_object_store

from .repository_helpers import SIGNING, VERIFY_ONLY, read_tree, tree, write_tree

PUBLIC = {"keys": VERIFY_ONLY, "require_signature": True}  # what an off-site verifier holds


@pytest.fixture(params=["folder", "s3"])
def copy(request, tmp_path):
    if request.param == "folder":
        return LocalObjectStore(tmp_path / "offsite")
    server = request.getfixturevalue("s3_env")
    bucket = server.make_bucket(f"off-{uuid.uuid4().hex[:12]}")
    return open_object_store(f"s3://{bucket}/quadra/backups")


@pytest.fixture
def s3_copy(s3_env):
    bucket = s3_env.make_bucket(f"off-{uuid.uuid4().hex[:12]}")
    return open_object_store(f"s3://{bucket}/backups")


def _repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "repo", keys=SIGNING, require_signature=True)


def _backup(repo: BackupRepository, source: Path, files: dict[str, bytes]) -> str:
    return repo.create(write_tree(source, files), sources={}).manifest.backup_id


def _problems(reports) -> list[str]:
    return [p for r in reports for p in r.problems]


def _changed(files: dict[str, bytes], seed: int) -> dict[str, bytes]:
    files = dict(files)
    rnd = random.Random(seed)
    data = bytearray(files["mlflow/mlflow.db"])
    data[rnd.randrange(len(data))] ^= 0xFF
    files["mlflow/mlflow.db"] = bytes(data)
    return files


def test_a_second_push_of_an_unchanged_repository_writes_nothing_and_the_copy_verifies_with_the_public_key(copy, tmp_path):
    repo = _repo(tmp_path)
    files = tree(scale=8)
    first = _backup(repo, tmp_path / "s1", files)
    second = _backup(repo, tmp_path / "s2", _changed(files, 1))

    pushed = offsite.push(repo, copy)
    assert pushed.manifests_written == 2 and pushed.head_written and pushed.head == second
    assert pushed.chunks_written == len(set(repo.chunks.known()))
    again = offsite.push(repo, copy)
    assert (again.bytes_written, again.chunks_written, again.manifests_written, again.head_written) == (0, 0, 0, False)

    third = _backup(repo, tmp_path / "s3", _changed(files, 2))
    added = offsite.push(repo, copy)
    assert added.manifests_written == 1 and added.head == third
    assert 0 < added.bytes_written < pushed.bytes_written / 4  # the changed chunk(s), a file list, metadata

    reports = offsite.verify(copy, read="all", **PUBLIC)
    assert _problems(reports) == [] and [r.backup_id for r in reports] == [first, second, third, "history"]
    assert sum(r.chunks_read for r in reports) > 0
    assert offsite.list_backups(copy) == [first, second, third]


def test_a_tampered_offsite_copy_is_refused(s3_copy, tmp_path):
    repo = _repo(tmp_path)
    files = tree(scale=8)
    _backup(repo, tmp_path / "s1", files)
    offsite.push(repo, s3_copy)
    old_head = s3_copy.get_bytes("head.json")
    middle = _backup(repo, tmp_path / "s2", _changed(files, 3))
    newest = _backup(repo, tmp_path / "s3", _changed(files, 4))
    offsite.push(repo, s3_copy)
    assert _problems(offsite.verify(s3_copy, read="all", **PUBLIC)) == []
    chunk = sorted(c for c in repo.chunks.known())[0]
    key = chunk_relpath(chunk)
    good = s3_copy.get_bytes(key)

    # A flipped byte: found by verify, and a restore from the copy writes nothing.
    s3_copy.put_bytes(key, bytes([good[0] ^ 1]) + good[1:])
    problems = _problems(offsite.verify(s3_copy, read="all", **PUBLIC))
    assert any(f"chunk {key} is corrupt" in p for p in problems), problems
    target = tmp_path / "restored"
    with pytest.raises(IntegrityError, match="corrupt"):
        offsite.restore(s3_copy, newest, target, **PUBLIC)
    assert not target.exists() and not any(p.name.startswith(".restored") for p in tmp_path.iterdir())

    # A missing chunk: found from the listing alone (nothing read).
    s3_copy.delete(key)
    problems = _problems(offsite.verify(s3_copy, read="none", **PUBLIC))
    assert any(f"chunk {key} is missing" in p for p in problems), problems
    s3_copy.put_bytes(key, good)
    assert _problems(offsite.verify(s3_copy, read="all", **PUBLIC)) == []

    # The head rolled back two backups: the chain says so, and the local record of the last push too.
    # (One backup back is what a push killed between a manifest and the head leaves: accepted by
    # the chain as a pending backup, docs/BACKUP_FORMAT.md; the witness still sees it.)
    s3_copy.put_bytes("head.json", old_head)
    problems = _problems(offsite.verify(s3_copy, read="none", local_root=repo.root, **PUBLIC))
    assert any("not in the history the head leads to" in p for p in problems), problems
    assert any("older than backup" in p and "pushed to it" in p for p in problems), problems
    for backup_id in (middle, newest):
        s3_copy.delete(f"manifests/{backup_id}.json")
        s3_copy.delete(f"manifests/{backup_id}.sha256")  # the whole copy rolled back: consistent on its own...
    alone = _problems(offsite.verify(s3_copy, read="none", **PUBLIC))
    witnessed = _problems(offsite.verify(s3_copy, read="none", local_root=repo.root, **PUBLIC))
    assert alone == [] and any("rolled back" in p for p in witnessed), witnessed  # ...but not to the witness

    # A forged manifest (edited, signed with another key) and an unsigned head are refused by the public key.
    from quadra_pipeline.keys import generate

    forger = BackupRepository(tmp_path / "forged", keys=generate("ed25519"), require_signature=True)
    _backup(forger, tmp_path / "s4", files)
    other = open_object_store(s3_copy.url + "-forged")
    offsite.push(forger, other)
    problems = _problems(offsite.verify(other, read="none", **PUBLIC))
    assert any("not in the backup keyring" in p for p in problems), problems


def test_a_push_never_overwrites_a_copy_of_another_history(copy, tmp_path):
    ours, theirs = _repo(tmp_path / "a"), _repo(tmp_path / "b")
    _backup(theirs, tmp_path / "s1", tree(seed=1))
    offsite.push(theirs, copy)
    _backup(ours, tmp_path / "s2", tree(seed=2))
    with pytest.raises(offsite.OffsiteError, match="not in this repository's history"):
        offsite.push(ours, copy)
    assert _problems(offsite.verify(copy, read="all", **PUBLIC)) == []


def test_pruning_applies_the_signed_deletions_to_the_copy(copy, tmp_path):
    repo = _repo(tmp_path)
    files = tree(scale=4)
    ids = [_backup(repo, tmp_path / f"s{i}", _changed(files, i)) for i in range(4)]
    offsite.push(repo, copy)
    repo.delete_many(ids[:2])  # retention's deletions: one signed record
    repo.gc()
    pushed = offsite.push(repo, copy)
    assert pushed.deleted_backups == ids[:2] and pushed.deleted_objects > 0
    assert offsite.list_backups(copy) == ids[2:]
    remote_chunks = {k.rsplit("/", 1)[-1] for k in copy.keys("chunks")}
    assert remote_chunks == set(repo.chunks.known())  # the chunks only the pruned backups held are gone
    assert _problems(offsite.verify(copy, read="all", **PUBLIC)) == []


def test_an_interrupted_push_leaves_the_old_head(copy, tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    files = tree(scale=4)
    first = _backup(repo, tmp_path / "s1", files)
    offsite.push(repo, copy)
    _backup(repo, tmp_path / "s2", _changed(files, 5))
    real = copy.put_bytes

    def fail_on_manifest(key, data):
        if key.startswith("manifests/") and key.endswith(".json"):
            raise OSError("connection lost")
        return real(key, data)

    monkeypatch.setattr(copy, "put_bytes", fail_on_manifest)
    with pytest.raises(OSError):
        offsite.push(repo, copy)
    monkeypatch.setattr(copy, "put_bytes", real)
    assert offsite.list_backups(copy) == [first]  # the new data is there, no manifest names it yet
    assert _problems(offsite.verify(copy, read="all", **PUBLIC)) == []
    offsite.push(repo, copy)
    assert _problems(offsite.verify(copy, read="all", **PUBLIC)) == []


def test_restore_and_pull_from_the_copy_when_the_local_repository_is_gone(copy, tmp_path):
    repo = _repo(tmp_path)
    files = tree(scale=4)
    _backup(repo, tmp_path / "s1", files)
    newest = _backup(repo, tmp_path / "s2", _changed(files, 7))
    offsite.push(repo, copy)
    import shutil

    shutil.rmtree(repo.root)
    manifest = offsite.restore(copy, "latest", tmp_path / "restored", **PUBLIC)
    assert manifest.backup_id == newest
    assert read_tree(tmp_path / "restored") == _changed(files, 7)
    assert not [p for p in tmp_path.iterdir() if ".offsite-" in p.name]  # the temporary repository is gone

    rebuilt = _repo(tmp_path)
    assert offsite.pull(copy, rebuilt) == offsite.list_backups(copy)
    assert rebuilt.history_problems() == [] and all(rebuilt.verify(i).ok for i in rebuilt.backup_ids())
    offsite.push(rebuilt, copy)  # the rebuilt repository extends the same history


def test_pull_from_an_empty_copy_says_so_and_leaves_nothing(copy, tmp_path):
    rebuilt = _repo(tmp_path)
    with pytest.raises(offsite.OffsiteError, match="holds no backup: nothing to pull"):
        offsite.pull(copy, rebuilt)
    assert not [p for p in tmp_path.iterdir() if ".pull-" in p.name]


def test_pull_into_a_repository_that_is_a_volumes_root(copy, tmp_path, monkeypatch):
    """The stack's repository is the root of its volume (/backups): its parent is not ours and a
    mount point cannot be renamed over, so the copy is fetched inside it and moved in. Pulls
    killed there before (while fetching, while moving in) are no obstacle."""
    import pathlib
    import shutil

    repo = _repo(tmp_path)
    files = tree(scale=2)
    _backup(repo, tmp_path / "s1", files)
    offsite.push(repo, copy)
    shutil.rmtree(repo.root)
    repo.root.mkdir()
    (repo.root / ".pull-left-by-a-kill").mkdir()
    (repo.root / "chunks" / "ab").mkdir(parents=True)  # and a pull killed while it moved in
    (repo.root / "chunks" / "ab" / "half").write_bytes(b"x")
    (repo.root / offsite.PULL_MOVING).touch()
    mount = repo.root
    real = pathlib.Path.is_mount
    monkeypatch.setattr(pathlib.Path, "is_mount", lambda self: self == mount or real(self))
    rebuilt = _repo(tmp_path)
    assert offsite.pull(copy, rebuilt) == offsite.list_backups(copy)
    assert rebuilt.history_problems() == [] and all(rebuilt.verify(i).ok for i in rebuilt.backup_ids())
    assert not [p.name for p in mount.iterdir() if p.name.startswith(".pull-")]  # the killed pulls' leftovers too
    assert not (mount / "chunks" / "ab" / "half").exists()
    assert not [p for p in tmp_path.iterdir() if ".pull-" in p.name]  # nothing staged beside the volume


def test_quadra_backup_restore_from_the_copy(s3_copy, tmp_path, monkeypatch):
    """`quadra backup offsite push|list|verify` and `quadra backup restore latest --from URL` as a user runs them."""
    from quadra_pipeline.cli import main
    from quadra_pipeline.keys import write_pair

    home = tmp_path / "home"
    (home / "checkpoints" / "run-1").mkdir(parents=True)
    (home / "checkpoints" / "run-1" / "ckpt.pt").write_bytes(random.Random(1).randbytes(300_000))
    write_pair(SIGNING, tmp_path / "backup.pem", tmp_path / "backup.pub")
    for name in ("QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY", "QUADRA_BACKUP_VERIFY_KEY_FILE",
                 "QUADRA_BACKUP_DIR", "DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_OBJECT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("QUADRA_BACKUP_SIGNING_KEY_FILE", str(tmp_path / "backup.pem"))
    monkeypatch.setenv("QUADRA_BACKUP_OFFSITE", s3_copy.url)
    monkeypatch.chdir(tmp_path)
    assert main(["backup", "create"]) == 0
    assert main(["backup", "offsite", "push"]) == 0
    assert main(["backup", "offsite", "list"]) == 0
    from quadra_pipeline.backup import offsite as module
    from quadra_pipeline.backup.service import BackupService
    from quadra_pipeline.settings import load_settings

    service = BackupService(load_settings())
    reports = module.check_after_push(service)  # what the hourly check runs: the chunks the push wrote re-read
    assert all(r.ok for r in reports) and sum(r.chunks_read for r in reports) >= 1
    # A host with the public key only verifies the copy and restores from it.
    monkeypatch.delenv("QUADRA_BACKUP_SIGNING_KEY_FILE")
    monkeypatch.setenv("QUADRA_BACKUP_VERIFY_KEY_FILE", str(tmp_path / "backup.pub"))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "gone"))
    assert main(["backup", "offsite", "verify", "--all"]) == 0
    assert main(["backup", "restore", "latest", "--from", s3_copy.url, "--target", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "checkpoints" / "run-1" / "ckpt.pt").read_bytes() == \
        (home / "checkpoints" / "run-1" / "ckpt.pt").read_bytes()
