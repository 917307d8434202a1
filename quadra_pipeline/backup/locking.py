"""The repository lock: `fcntl.flock` on `root/.lock`, re-entrant within one thread.

`flock` belongs to an open file, so two opens of `.lock` in one process would exclude each other.
The lock is therefore counted per process: the thread that holds it may take it again (the
retention code can hold it around `delete` and `gc`, which take it too); another thread of the
same process, like another process, is refused (or waits, with `blocking=True`). The holder
writes its pid into the file, and the refusal names it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import BackupError, BackupLockedError


@dataclass
class _Held:
    fd: int
    owner: int
    depth: int


_registry = threading.Condition(threading.Lock())
_held: dict[str, _Held] = {}


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _locked(root: Path, pid: str) -> BackupLockedError:
    return BackupLockedError(f"{root}: is locked by another backup or restore (pid {pid})")


@contextmanager
def repository_lock(root: Path, *, blocking: bool = False) -> Iterator[None]:
    lock_path = root / ".lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"{root}: cannot create the backup repository: {exc.strerror or exc}") from None
    key = os.path.realpath(lock_path)
    me = threading.get_ident()
    with _registry:
        while True:
            held = _held.get(key)
            if held is None:
                break
            if held.owner == me:
                held.depth += 1
                break
            if not blocking:
                raise _locked(root, str(os.getpid()))
            _registry.wait()
        if held is None:
            _held[key] = held = _Held(fd=-1, owner=me, depth=1)  # reserve against other threads
    if held.fd == -1:
        try:
            held.fd = _acquire(lock_path, root, blocking)
        except BaseException:
            with _registry:
                del _held[key]
                _registry.notify_all()
            raise
    try:
        yield
    finally:
        with _registry:
            held.depth -= 1
            if held.depth == 0:
                del _held[key]
                try:
                    fcntl.flock(held.fd, fcntl.LOCK_UN)
                finally:
                    os.close(held.fd)
                _registry.notify_all()


def _acquire(lock_path: Path, root: Path, blocking: bool) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise BackupError(f"{lock_path}: cannot open the lock file: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise _locked(root, _holder_pid(fd)) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # a full disk must not stop the lock; the pid is only for the message
    except BaseException:
        os.close(fd)
        raise
    return fd
