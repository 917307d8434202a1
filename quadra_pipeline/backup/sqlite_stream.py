"""A consistent snapshot of a live SQLite database, streamed from the database file itself: one
read, no copy, the row counts taken from the same read.

Inside one read transaction the database file is the snapshot whenever nothing can change the
file while it is read:
- rollback-journal mode: the reader's SHARED lock keeps every writer from committing (they wait,
  as long as they would wait for an online-backup copy);
- WAL mode: a reader that begins while the WAL is fully checkpointed reads the file only (read
  lock 0), and no checkpoint may write into the file while such a reader is active (SQLite's
  checkpointer needs that lock exclusively). So: checkpoint the WAL (TRUNCATE), begin, check that
  the WAL is still empty; if a writer slipped in between, start again. Writers go on appending
  to the WAL meanwhile. If the WAL cannot be emptied (a long reader holds it), the snapshot falls
  back to SQLite's online backup API into a scratch copy, and says so in `method`.

The reading runs in a child process (`python -m quadra_pipeline.backup.sqlite_stream`), like
pg_dump: SQLite's locks are POSIX locks, which a process loses on closing any descriptor of the
file, so a raw read must not happen in a process whose other connections hold locks on it. The
child writes the file to stdout and, last, a one-line JSON summary to stderr (page size and
count, journal mode, Alembic revision, rows per table counted from the streamed pages:
sqlite_pages.py).

Tables named in `leave_out` (the backup catalogue, whose rows change with every backup) are
streamed as empty tables, their other pages on the free list (sqlite_leave_out.py), so an
unchanged database streams to the same bytes every hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .child import child_stream, last_line
from .errors import BackupError, SnapshotError
from .sqlite_leave_out import LeaveOut, plan
from .sqlite_pages import PageCounter

SUMMARY = "quadra-sqlite-snapshot "
ATTEMPTS = 20
BUSY_TIMEOUT_S = 30.0
BLOCK = 8 << 20


class SqliteSnapshotError(SnapshotError):
    """The SQLite database cannot be snapshotted; one line."""


@contextlib.contextmanager
def snapshot_stream(path: Path, part: dict[str, Any], what: str, *, timeout: float, scratch: Path,
                    leave_out: tuple[str, ...] = ()) -> Iterator[IO[bytes]]:
    """The database's bytes as a stream (from the child); `part` gets the summary once the stream
    has been read to its end. The tables of `leave_out` are streamed without their rows."""
    argv = [sys.executable, "-m", "quadra_pipeline.backup.sqlite_stream", str(path), str(scratch), *leave_out]
    with child_stream(argv, env=None, what=what, name="the SQLite snapshot reader", timeout=timeout,
                      error=SqliteSnapshotError, failure=_failure) as child:
        yield child.stdout
    lines = [line for line in child.stderr.splitlines() if line.startswith(SUMMARY)]
    if not lines:
        raise SqliteSnapshotError(f"{what}: the SQLite snapshot reader gave no summary ({last_line(child.stderr)})")
    part.update(json.loads(lines[-1][len(SUMMARY):]))


def _failure(code: int, text: str) -> str:
    message = last_line(text)
    return message[len("error: "):] if message.startswith("error: ") else f"the SQLite snapshot reader failed (exit {code}): {message}"


# The child ------------------------------------------------------------------------------------


def _connect(path: Path, *, query_only: bool) -> sqlite3.Connection:
    # mode=rw: never creates a missing file (read-only when the file is).
    uri = "file:" + str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    if query_only:
        connection.execute("PRAGMA query_only = ON")
    return connection


def _wal_empty(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size == 0
    except FileNotFoundError:
        return True


def _begin_on_a_stable_file(connection: sqlite3.Connection, path: Path, journal_mode: str) -> bool:
    """Begin a read transaction in which the database file is the snapshot; False if the WAL
    never emptied in `ATTEMPTS` tries."""
    for attempt in range(ATTEMPTS):
        if journal_mode == "wal":
            with contextlib.closing(_connect(path, query_only=False)) as checkpointer:
                with contextlib.suppress(sqlite3.OperationalError):
                    checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        connection.execute("BEGIN")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot starts here
        if journal_mode != "wal" or _wal_empty(path):
            return True
        connection.execute("ROLLBACK")
        time.sleep(min(0.05 * (attempt + 1), 0.5))
    return False


def _describe(connection: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int], str | None, int, int]:
    roots: dict[str, int] = {}
    indexes: dict[str, int] = {}
    for kind, name, root in connection.execute("SELECT type, name, rootpage FROM sqlite_master WHERE rootpage > 0"):
        if kind == "table" and not str(name).startswith("sqlite_"):
            roots[str(name)] = int(root)
        else:  # indexes (and SQLite's own tables): walked, not counted
            indexes[str(name)] = int(root)
    revision = None
    if "alembic_version" in roots:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = None if row is None else str(row[0])
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    page_count = int(connection.execute("PRAGMA page_count").fetchone()[0])
    return roots, indexes, revision, page_size, page_count


def _stream(fd: int, source: Path, size: int, counter: PageCounter, out: IO[bytes], left_out: LeaveOut) -> int:
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    left, page = size, 1
    while left:
        block = os.read(fd, min(BLOCK, left))  # (whole pages: BLOCK is a multiple of every page size)
        if not block:
            raise SqliteSnapshotError(f"{source} ended {left} bytes before its last page (truncated while read?)")
        if len(block) % counter.page_size:
            rest = counter.page_size - len(block) % counter.page_size
            block += os.read(fd, min(rest, left - len(block)))
        block = left_out.patch(block, page, counter.page_size)
        page += len(block) // counter.page_size
        counter.feed(block)
        out.write(block)
        left -= len(block)
    return size


def snapshot(path: Path, scratch: Path, out: IO[bytes], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write a consistent snapshot of the database at `path` to `out`, the tables of
    `leave_out` without their rows; return its summary."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))  # (no lock held yet: closing drops nothing)
    except OSError as exc:
        raise SqliteSnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
    connection = _connect(path, query_only=True)
    try:
        journal_mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        method = "read transaction, streamed from the database file"
        copy: Path | None = None
        if not _begin_on_a_stable_file(connection, path, journal_mode):
            method = "sqlite3 online backup API into a scratch copy (the WAL could not be emptied: a reader held it)"
            scratch.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="sqlite-snapshot-", suffix=".db", dir=scratch)
            os.close(handle)
            copy = Path(name)
            with contextlib.closing(sqlite3.connect(str(copy), isolation_level=None)) as target:
                connection.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")
            connection.close()
            connection = _connect(copy, query_only=True)
            connection.execute("BEGIN")
        try:
            roots, indexes, revision, page_size, page_count = _describe(connection)
            fd = os.open(copy or path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    left_out = plan(connection, fd, leave_out, page_size, page_count) if leave_out else LeaveOut()
                except BackupError as exc:
                    raise SqliteSnapshotError(f"its b-tree pages are damaged ({exc}); PRAGMA integrity_check says more") from None
                if left_out.page_count is not None:
                    page_count = left_out.page_count  # (free pages at the end are not streamed)
                counter = PageCounter(page_size, page_count)
                size = _stream(fd, copy or path, page_size * page_count, counter, out, left_out)
            finally:
                os.close(fd)  # (drops this process's locks on the file: the reading is over)
            try:
                tables = counter.counts(roots, indexes)
            except BackupError as exc:
                raise SqliteSnapshotError(f"its b-tree pages are damaged ({exc}); PRAGMA integrity_check says more") from None
            connection.execute("COMMIT")
        finally:
            if copy is not None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{copy}{suffix}").unlink(missing_ok=True)
    finally:
        connection.close()
    summary = {"method": method, "journal_mode": journal_mode, "alembic_revision": revision, "tables": tables,
               "page_size": page_size, "bytes": size}
    if leave_out:
        summary["left_out_data"] = sorted(left_out.tables)
        if left_out.note:
            summary["left_out_note"] = left_out.note
    return summary


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m quadra_pipeline.backup.sqlite_stream DATABASE SCRATCH_DIR [LEFT_OUT_TABLE ...]", file=sys.stderr)
        return 2
    try:
        summary = snapshot(Path(argv[0]), Path(argv[1]), sys.stdout.buffer, tuple(argv[2:]))
        sys.stdout.buffer.flush()
    except (sqlite3.Error, BackupError, OSError) as exc:
        lines = str(exc).splitlines()
        print(f"error: {lines[0] if lines else type(exc).__name__}", file=sys.stderr)
        return 1
    print(SUMMARY + json.dumps(summary, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
