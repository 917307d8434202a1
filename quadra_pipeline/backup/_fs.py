"""File-system helpers of the backup format: streaming hash+copy, atomic writes, staging runs.

Streaming: every byte goes through a few reusable 8 MiB buffers (`readinto`, then the same
buffer is hashed and written), so memory does not grow with file size. For large files the
hashing runs in a second thread on the buffer just written (`hashlib` releases the GIL), so
hashing overlaps reading and writing.

Staging runs: each create/restore/import/export works in `root/staging/<run>/`, announced by
`root/staging/<run>.lock`, which the run holds with `flock` for its lifetime. A run that was
killed leaves an unlocked `.lock`; `cleanup_runs` removes such runs (and the temporary paths
they recorded outside the repository: a restore's staging directory, an export's temp file)
and never touches a live run.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import BackupError, UnsafePathError

CHUNK = 8 << 20  # bytes per read/hash/write
PIPELINE_MIN = 32 << 20  # files at least this large hash in a second thread
_PIPELINE_BUFFERS = 3


def hook(event: str, **info: object) -> None:
    """Test seam: called at the points where a kill matters (after each object, sidecar, manifest,
    restored file, final rename). Tests replace it to SIGKILL the process at a chosen point."""


def write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def stream(read_into: Callable[[memoryview], int], dst_fd: int | None = None, *, size_hint: int = 0) -> tuple[str, int]:
    """Read everything `read_into` gives, hash it, write it to `dst_fd` (if any); (sha256 hex, bytes)."""
    digest = hashlib.sha256()
    if dst_fd is not None and size_hint >= PIPELINE_MIN:
        return _stream_pipelined(read_into, dst_fd, digest)
    size = CHUNK if size_hint <= 0 or size_hint >= CHUNK else max(1 << 16, size_hint + 1)
    buffer = memoryview(bytearray(size))
    total = 0
    while n := read_into(buffer):
        view = buffer[:n]
        digest.update(view)
        if dst_fd is not None:
            write_all(dst_fd, view)
        total += n
    return digest.hexdigest(), total


def _stream_pipelined(read_into: Callable[[memoryview], int], dst_fd: int, digest: "hashlib._Hash") -> tuple[str, int]:
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(_PIPELINE_BUFFERS)]
    pending: list[Future[None] | None] = [None] * _PIPELINE_BUFFERS
    total = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-hash") as executor:
        try:
            i = 0
            while True:
                if pending[i] is not None:
                    pending[i].result()  # the buffer is free again (one worker: updates stay in order)
                    pending[i] = None
                n = read_into(buffers[i])
                if not n:
                    break
                view = buffers[i][:n]
                pending[i] = executor.submit(digest.update, view)
                write_all(dst_fd, view)
                total += n
                i = (i + 1) % _PIPELINE_BUFFERS
        finally:
            for future in pending:
                if future is not None:
                    future.result()
    return digest.hexdigest(), total


def fd_reader(fd: int) -> Callable[[memoryview], int]:
    return lambda view: os.readv(fd, [view])


def advise_sequential(fd: int) -> None:
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass


def open_regular(path: Path, what: str) -> int:
    """Open a regular file for reading without following a symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{what} {path} is a symlink; refusing to follow it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
            cls = UnsafePathError if kind == "a device" else BackupError
            raise cls(f"{what} {path} is {kind}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sync_fs(path: Path) -> None:
    """Make everything written to the file system holding `path` durable (Linux `syncfs`): one
    flush for a backup's many chunk files, before its manifest is written. A `syncfs` that fails
    (EIO: the disk lost writes; ENOSPC, EDQUOT) raises OSError, so no backup names chunks that
    may not be on disk. Only where there is no `syncfs` (not Linux, or ENOSYS) does it fall back
    to `sync()`, which reports no error."""
    import ctypes
    import ctypes.util

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            syncfs = getattr(libc, "syncfs", None)
        except OSError:
            syncfs = None
        if syncfs is not None:
            if syncfs(fd) == 0:
                return
            code = ctypes.get_errno()
            if code != errno.ENOSYS:
                raise OSError(code, f"syncfs: {os.strerror(code)}", str(path))
    finally:
        os.close(fd)
    os.sync()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdirs(directory: Path, stop: Path) -> None:
    """mkdir -p, fsyncing each parent that gained an entry (up to `stop`)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current == stop or current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        fsync_dir(path.parent)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a new file and fsync it (the caller renames it into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        write_all(fd, memoryview(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None, mode: int = 0o644) -> None:
    """Temp file (in `tmp_dir`, same file system), fsync, rename over `path`, fsync the directory."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        write_file(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree; read-only entries included; no error if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StagingRun:
    """`root/staging/<run>/` for one operation, announced by a flocked `<run>.lock`."""

    RECORD = "external"

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.dir = staging / self.name
        self._fd: int | None = None

    def __enter__(self) -> StagingRun:
        self.staging.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f".tmp-{self.name}.lock"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, self.staging / f"{self.name}.lock")
            os.mkdir(self.dir, 0o700)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            (self.staging / f"{self.name}.lock").unlink(missing_ok=True)
            raise
        self._fd = fd
        return self

    def record_external(self, path: Path) -> None:
        """Remember a temporary path outside the repository, so a cleanup after a kill removes it."""
        with open(self.dir / self.RECORD, "a", encoding="utf-8") as handle:
            handle.write(os.fspath(path.absolute()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def __exit__(self, *exc: object) -> None:
        remove_tree(self.dir)
        (self.staging / f"{self.name}.lock").unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cleanup_runs(staging: Path) -> list[str]:
    """Remove what killed runs left in `staging` (and the external temp paths they recorded)."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(staging))
    except FileNotFoundError:
        return removed
    for name in entries:
        if not name.endswith(".lock"):
            continue
        lock_path = staging / name
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run
            run = name[: -len(".lock")]
            if run.startswith(".tmp-"):
                run = run[len(".tmp-") :]
            run_dir = staging / run
            if run_dir.is_dir() and not run_dir.is_symlink():
                _remove_externals(run_dir, run)
                remove_tree(run_dir)
            lock_path.unlink(missing_ok=True)
            removed.append(run)
        finally:
            os.close(fd)
    for name in sorted(os.listdir(staging)):
        path = staging / name
        if not name.endswith(".lock") and not (staging / f"{name}.lock").exists():
            if path.is_dir() and not path.is_symlink():
                _remove_externals(path, name)
            remove_tree(path)
            removed.append(name)
    return removed


def _remove_externals(run_dir: Path, run: str) -> None:
    try:
        lines = (run_dir / StagingRun.RECORD).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return
    for line in lines:
        path = Path(line)
        # Only what this run made: hidden names carrying the run's name, e.g. `.target.restore-<run>`.
        if path.is_absolute() and path.name.startswith(".") and run in path.name:
            remove_tree(path)
