"""The private folder one `quadra serve` shares between its follower and its workers.

    <cache dir>/serve-<pid>-<random>/     mode 700, made at start, removed at stop
        current.json        the version to serve: written (atomically) only after it verified
        status.json         what the follower saw at its last look at the alias
        versions/v<N>-<sig>/   verified model directories (the last few)
        staging/            downloads being verified
        metrics/<pid>.json  each worker's counters, summed by /metrics
        wake                touched by a verified webhook: look at the alias now

One follower (a thread of the main process) downloads and verifies; the workers (uvicorn
processes, or the main process itself with one worker) watch `current.json` and load what it
names, verifying the files again in their own process before the first request sees them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

RUN_DIR_VARIABLE = "QUADRA_SERVING_RUN_DIR"  # how spawned workers find the folder (not a setting)


def make_run_dir(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    run_dir = cache_dir / f"serve-{os.getpid()}-{secrets.token_hex(4)}"
    run_dir.mkdir(mode=0o700)
    for name in ("versions", "staging", "metrics"):
        (run_dir / name).mkdir(mode=0o700)
    return run_dir


def remove_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.current = self.path / "current.json"
        self.status = self.path / "status.json"
        self.versions = self.path / "versions"
        self.staging = self.path / "staging"
        self.metrics = self.path / "metrics"
        self.wake_file = self.path / "wake"

    def wake(self) -> None:
        self.wake_file.touch()

    def take_wake(self) -> bool:
        try:
            self.wake_file.unlink()
            return True
        except FileNotFoundError:
            return False

    def read_current(self) -> dict[str, Any] | None:
        return read_json(self.current)

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.status)
