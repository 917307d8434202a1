"""Real kills (SIGKILL) during backup and restore, and two backups started at once (two processes).

A child process runs `create` or `restore` and kills itself at a chosen point: after the k-th
file stored, the file-list object, the sidecar, the manifest, the head, a restored file, just
before or after the final rename, or in the middle of the k-th buffer written (half of it on
disk: a chunk, or the file list). Other children are killed from outside
after a delay. After every kill: no new backup that looks complete and is not, the old backups
verify, `cleanup_staging` removes the leftovers, and the next run succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quadra_pipeline.backup import BackupLockedError, BackupRepository, SourceFile

from .repository_helpers import (
    REPO_ROOT,
    SIGNING,
    assert_untouched,
    read_tree,
    sha256sum_check,
    write_tree,
)

CHILD = """
import os, signal, sys, time
from pathlib import Path
from quadra_pipeline.backup import BackupRepository, SourceFile, _fs

from quadra_pipeline.keys import load_pair

root, action, arg, event, nth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
keys = load_pair("ed25519", private_text=None, private_file=Path(os.environ["QUADRA_TEST_BACKUP_KEY"]), public_text=None,
                 public_file=None, names=("key", "public key"))
count = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hook(name, **info):
    global count
    if name == event:
        count += 1
        if count == nth:
            die()
    if event == "hold" and name == "object":
        print("holding", flush=True)
        while not Path(arg + ".go").exists():
            time.sleep(0.01)

_fs.hook = hook
if event == "write":
    original = _fs.write_all
    def write_all(fd, view):
        global count
        count += 1
        if count == nth:
            original(fd, view[: len(view) // 2])
            die()
        original(fd, view)
    _fs.write_all = write_all

repo = BackupRepository(Path(root), keys=keys, require_signature=True)
print("started", flush=True)
if action == "create":
    src = Path(arg)
    files = [SourceFile(p.relative_to(src).as_posix(), p) for p in sorted(src.rglob("*")) if p.is_file()]
    result = repo.create(files, sources={"run": "child"})
    if event == "write":
        print("writes", count, flush=True)
    print("created", result.manifest.backup_id, flush=True)
else:
    backup_id, target = arg.split("|")
    repo.restore(backup_id, Path(target))
    print("restored", flush=True)
"""

SMALL_FILES = 5  # plus one large file (pipelined hashing: several 8 MiB buffers)
LARGE = 40 << 20


def _key_file() -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"quadra-test-backup-key-{os.getpid()}.pem"
    if not path.exists():
        path.write_bytes(SIGNING.private_pem)
    return path


def child(root: Path, action: str, arg: str, event: str = "none", nth: int = 0, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(root), action, arg, event, str(nth)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "QUADRA_TEST_BACKUP_KEY": str(_key_file())},
        **kwargs,
    )


def _repo(root: Path) -> BackupRepository:
    return BackupRepository(root, keys=SIGNING, require_signature=True)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    old = {f"data/file{i}.bin": os.urandom(10_000 + i) for i in range(SMALL_FILES)}
    new = {f"data/file{i}.bin": os.urandom(20_000 + i) for i in range(SMALL_FILES)}
    new["models/large.pt"] = os.urandom(LARGE)
    write_tree(base / "old", old)
    write_tree(base / "new", new)
    return base / "old", base / "new", new


def _sources(directory: Path) -> list[SourceFile]:
    return [SourceFile(p.relative_to(directory).as_posix(), p) for p in sorted(directory.rglob("*")) if p.is_file()]


def _check_after_kill(repo: BackupRepository, base_id: str, source: Path, *, completed_expected: bool | None) -> None:
    new_ids = [i for i in repo.backup_ids() if i != base_id]
    if completed_expected is not None:
        assert bool(new_ids) == completed_expected, new_ids
    # Whatever exists is complete: it verifies and `sha256sum -c` agrees.
    assert_untouched(repo, [base_id, *new_ids])
    leftovers = os.listdir(repo.staging_dir)
    removed = repo.cleanup_staging()
    assert removed >= (1 if leftovers else 0)
    assert os.listdir(repo.staging_dir) == []
    assert sorted(os.listdir(repo.manifests_dir)) == sorted(f"{i}.{e}" for i in [base_id, *new_ids] for e in ("json", "sha256"))
    nxt = repo.create(_sources(source), sources={"run": "next"})
    assert_untouched(repo, [base_id, *new_ids, nxt.manifest.backup_id])
    repo.gc()  # chunks the killed run left are unreferenced: gc removes them, and nothing else
    assert_untouched(repo, [base_id, *new_ids, nxt.manifest.backup_id])


KILL_POINTS = (
    [("object", k, False) for k in range(1, SMALL_FILES + 2)]
    # (after the manifest, before the head: complete; the history accepts the one backup past the head)
    + [("file-list", 1, False), ("sidecar", 1, False), ("manifest", 1, True), ("head", 1, True)]
    # writes: the small files' chunks, the large one's (at least 40: 40 MiB in chunks of at most 1 MiB)
    + [("write", k, False) for k in (1, 3, SMALL_FILES + 1, SMALL_FILES + 3, SMALL_FILES + 20, SMALL_FILES + 39)]
)


@pytest.mark.parametrize(("event", "nth", "completed"), KILL_POINTS, ids=[f"{e}-{n}" for e, n, _ in KILL_POINTS])
def test_kill_during_backup(tmp_path, trees, event, nth, completed):
    old, new, _ = trees
    repo = _repo(tmp_path / "repo")
    base_id = repo.create(_sources(old), sources={"run": "base"}).manifest.backup_id
    process = child(repo.root, "create", str(new), event, nth)
    out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, (out, err)
    assert "created" not in out
    _check_after_kill(repo, base_id, new, completed_expected=completed)


def test_the_write_kill_points_land_where_intended(tmp_path, trees):
    """Count the buffers one run writes: one per chunk (the small files' and the large one's),
    then the file list, the sidecar, the manifest and the head. So the `write` kill points above
    land inside chunks."""
    _, new, _ = trees
    process = child(tmp_path / "repo", "create", str(new), "write", 10_000)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    backup_id = out.split()[-1]
    chunks = len(_repo(tmp_path / "repo").read_manifest(backup_id).chunks)
    assert f"writes {chunks + 4}" in out
    assert chunks >= SMALL_FILES + 40


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_kill_during_backup_after_a_delay(tmp_path, trees, delay):
    old, new, _ = trees
    repo = _repo(tmp_path / "repo")
    base_id = repo.create(_sources(old), sources={"run": "base"}).manifest.backup_id
    process = child(repo.root, "create", str(new))
    assert process.stdout.readline().strip() == "started"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    _check_after_kill(repo, base_id, new, completed_expected=("created" in out) if process.returncode == 0 else None)


RESTORE_KILL_POINTS = (
    [("restore-file", k, False) for k in (1, 3, SMALL_FILES + 1)]
    + [("write", k, False) for k in (1, SMALL_FILES + 2)]
    + [("restore-before-rename", 1, False), ("restore-renamed", 1, True)]
)


@pytest.mark.parametrize(("event", "nth", "complete"), RESTORE_KILL_POINTS, ids=[f"{e}-{n}" for e, n, _ in RESTORE_KILL_POINTS])
def test_kill_during_restore(tmp_path, trees, event, nth, complete):
    _, new, files = trees
    repo = _repo(tmp_path / "repo")
    backup_id = repo.create(_sources(new), sources={}).manifest.backup_id
    target = tmp_path / "restored"
    process = child(repo.root, "restore", f"{backup_id}|{target}", event, nth)
    out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, (out, err)
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".restored.restore-")]
    if complete:
        assert read_tree(target) == files
        assert staged == []
    else:
        assert not target.exists()  # never a target that looks complete and is not
        assert len(staged) == 1
    assert repo.cleanup_staging() >= 1
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".restored.restore-")] == []
    assert os.listdir(repo.staging_dir) == []
    assert_untouched(repo, [backup_id])
    again = tmp_path / "again"
    repo.restore(backup_id, again)
    assert read_tree(again) == files


def test_two_backups_started_at_once(tmp_path, trees):
    old, new, _ = trees
    repo = _repo(tmp_path / "repo")
    base_id = repo.create(_sources(old), sources={"run": "base"}).manifest.backup_id
    # The first backup stops after its first object, holding the lock, until `<new>.go` appears.
    first = child(repo.root, "create", str(new), "hold", 0)
    gate = Path(str(new) + ".go")
    try:
        assert first.stdout.readline().strip() == "started"
        assert first.stdout.readline().strip() == "holding"
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path;"
                "from quadra_pipeline.backup import BackupRepository, BackupLockedError, SourceFile\n"
                "repo = BackupRepository(Path(sys.argv[1]))\n"
                "try:\n"
                "    repo.create([SourceFile('a', Path(sys.argv[2]))], sources={})\n"
                "except BackupLockedError as exc:\n"
                "    print(exc); sys.exit(3)\n",
                str(repo.root),
                str(next(old.rglob("*.bin"))),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert second.returncode == 3, second.stderr
        assert second.stdout.strip() == f"{repo.root}: is locked by another backup or restore (pid {first.pid})"
        # This test process is a third contender: create, restore, gc and delete are refused too.
        for attempt in (
            lambda: repo.create(_sources(old), sources={}),
            lambda: repo.restore(base_id, tmp_path / "t"),
            lambda: repo.gc(),
            lambda: repo.delete(base_id),
        ):
            with pytest.raises(BackupLockedError, match=rf"is locked by another backup or restore \(pid {first.pid}\)"):
                attempt()
        assert repo.verify(base_id).ok  # reading needs no lock
        gate.touch()
        out, err = first.communicate(timeout=120)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
        gate.unlink(missing_ok=True)
    assert first.returncode == 0, err
    created = out.split()[-1]
    assert_untouched(repo, [base_id, created])
    assert not (tmp_path / "t").exists()
    assert sha256sum_check(repo.root, f"manifests/{created}.sha256").returncode == 0
