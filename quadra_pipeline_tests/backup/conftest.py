"""Fixtures of the backup tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quadra_pipeline.backup.repository import BackupRepository

from .repository_helpers import KEY, SIGNING
from .source_homes import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """An empty data home under tmp_path (its databases and folders made by each test)."""
    return Home(tmp_path / "home")


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "repo", keys=SIGNING, hmac_key=KEY, require_signature=True)


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
