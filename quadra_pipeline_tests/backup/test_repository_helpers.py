"""Shared helpers of the backup-format tests (no tests here)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quadra_pipeline.backup import BackupRepository, SourceFile

KEY = "test-secret-key"
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_tree(directory: Path, files: dict[str, bytes]) -> list[SourceFile]:
    """Write `files` under `directory` and return them as SourceFiles (path in tree = relative path)."""
    sources = []
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sources.append(SourceFile(rel, path))
    return sources


def sample_files(seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    return {
        "mlflow/mlflow.db": rnd.randbytes(40_000 * scale),
        "mlflow/artifacts/1/model.pt": rnd.randbytes(120_000 * scale),
        "quadra.db": rnd.randbytes(30_000 * scale),
        "models/champion.pt": rnd.randbytes(80_000 * scale),
        "models/copy-of-champion.pt": b"",  # filled below: same content as champion
        "empty.txt": b"",
    }


def tree(seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    files = sample_files(seed, scale)
    files["models/copy-of-champion.pt"] = files["models/champion.pt"]
    return files


def read_tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk under root (files and directories)."""
    total = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def sha256sum_check(root: Path, sidecar: str) -> subprocess.CompletedProcess:
    """The real `sha256sum -c`, run from `root` (relative paths)."""
    return subprocess.run(["sha256sum", "--strict", "-c", sidecar], cwd=root, capture_output=True, text=True)


def checksum_list_of(root: Path, backup_id: str) -> str:
    """The checksum-list object's path, as the sidecar's third line names it."""
    lines = (root / "manifests" / f"{backup_id}.sha256").read_text().splitlines()
    return lines[2].split("  ", 1)[1]


def sha256sum_check_backup(root: Path, backup_id: str) -> subprocess.CompletedProcess:
    """The two-step check of docs/BACKUP_FORMAT.md with the real tool, as a user types it in `root`:
    `sha256sum -c manifests/<id>.sha256 && sha256sum -c objects/xx/<checksum-list sha>` (the second
    step skipped for an empty backup, whose checksum list is empty)."""
    script = (
        'list=$(sed -n "3s/^[0-9a-f]*  //p" "manifests/$1.sha256") && sha256sum --strict -c "manifests/$1.sha256" '
        '&& { [ ! -s "$list" ] || sha256sum --strict -c "$list"; }'
    )
    return subprocess.run(["sh", "-c", script, "sh", backup_id], cwd=root, capture_output=True, text=True)


def run_python(code: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (sys.argv[1:] = args)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


def flip_byte(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "repo", KEY, require_signature=True)


def assert_untouched(repo: BackupRepository, ids: list[str]) -> None:
    """Every backup in `ids` still verifies and is exactly what the repository lists."""
    assert repo.backup_ids() == ids
    for backup_id in ids:
        report = repo.verify(backup_id)
        assert report.ok, report.problems
        checked = sha256sum_check_backup(repo.root, backup_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB tmpfs, to fill up. Skipped (with the reason) only where mounting is not allowed."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs for the full-disk test: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_disk(directory: Path, leave_pages: int = 0) -> Path:
    """Fill the file system of `directory` with one file, then free `leave_pages` 4 KiB pages."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"\xff" * 4096
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_pages * 4096))
    return filler
