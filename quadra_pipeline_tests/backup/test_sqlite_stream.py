"""SQLite snapshots streamed from the database file: consistent while writers write, row counts
from the streamed pages equal to SQL's, the fallback when the WAL cannot be emptied, bad files."""

from __future__ import annotations

import io
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from quadra_pipeline.backup.sqlite_pages import PageCounter
from quadra_pipeline.backup.sqlite_stream import SqliteSnapshotError, snapshot, snapshot_stream


def sql_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {n: db.execute('SELECT count(*) FROM "{}"'.format(n.replace('"', '""'))).fetchone()[0] for n in names}


def build(path: Path, *, wal: bool = True, rows: int = 20000) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE metric (id INTEGER PRIMARY KEY, run TEXT, value REAL, note TEXT)")
    db.execute("CREATE INDEX metric_run ON metric (run)")
    db.execute("CREATE TABLE keyed (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
    db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, payload BLOB)")  # rows with overflow pages
    db.execute("CREATE TABLE empty (x)")
    db.execute('CREATE TABLE "odd ""name" (x)')
    db.executemany("INSERT INTO metric (run, value, note) VALUES (?, ?, ?)",
                   ((f"run-{i % 7}", i * 0.5, "n" * (i % 300)) for i in range(rows)))
    db.executemany("INSERT INTO keyed VALUES (?, ?)", ((f"key-{i:06d}", bytes(i % 200)) for i in range(rows // 2)))
    db.executemany("INSERT INTO big (payload) VALUES (?)", ((bytes([i]) * 20000,) for i in range(50)))
    db.execute('INSERT INTO "odd ""name" VALUES (1)')
    db.execute("DELETE FROM metric WHERE id % 3 = 0")  # free pages full of old content
    db.commit()
    db.close()


def take(path: Path, tmp_path: Path) -> tuple[bytes, dict]:
    out = io.BytesIO()
    summary = snapshot(path, tmp_path / "scratch", out)
    return out.getvalue(), summary


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_the_stream_is_the_database_and_the_page_counts_are_sqls(tmp_path, wal):
    source = tmp_path / "live.db"
    build(source, wal=wal)
    data, summary = take(source, tmp_path)
    assert summary["method"] == "read transaction, streamed from the database file"
    assert summary["journal_mode"] == ("wal" if wal else "delete")
    assert summary["bytes"] == len(data) == summary["page_size"] * (len(data) // summary["page_size"])
    restored = tmp_path / "restored.db"
    restored.write_bytes(data)
    with sqlite3.connect(restored) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert summary["tables"] == sql_counts(restored) == sql_counts(source)
    assert summary["tables"]["keyed"] == 10000 and summary["tables"]["empty"] == 0 and summary["tables"]['odd "name'] == 1


def test_an_uncheckpointed_wal_is_checkpointed_first(tmp_path):
    """Rows that live only in the WAL (nothing checkpointed yet) are in the snapshot."""
    source = tmp_path / "live.db"
    build(source, rows=100)
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.executemany("INSERT INTO metric (run, value, note) VALUES ('wal-only', 1, '')", [()] * 500)
    writer.commit()
    assert (tmp_path / "live.db-wal").stat().st_size > 0
    data, summary = take(source, tmp_path)
    writer.close()
    restored = tmp_path / "restored.db"
    restored.write_bytes(data)
    assert summary["tables"]["metric"] == sql_counts(restored)["metric"] == 67 + 500


def _write_pairs(path: str, stop, started) -> None:
    """Each transaction adds one row to `a` and one to `b`: in any consistent state they match."""
    db = sqlite3.connect(path, timeout=30)
    started.set()
    n = 0
    while not stop.is_set():
        with db:
            db.execute("INSERT INTO a (v) VALUES (?)", (n,))
            db.execute("INSERT INTO b (v) VALUES (?)", (n,))
        n += 1
    db.close()


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_a_snapshot_taken_while_another_process_writes_is_one_consistent_state(tmp_path, wal):
    source = tmp_path / "live.db"
    db = sqlite3.connect(source)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v)")
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, v)")
    db.execute("CREATE TABLE filler (x BLOB)")
    db.executemany("INSERT INTO filler VALUES (?)", ((bytes(2000),) for _ in range(3000)))  # ~6 MB to read
    db.commit()
    db.close()
    context = multiprocessing.get_context("spawn")
    stop, started = context.Event(), context.Event()
    writer = context.Process(target=_write_pairs, args=(str(source), stop, started))
    writer.start()
    try:
        assert started.wait(30)
        time.sleep(0.3)
        for round_ in range(3):
            data, summary = take(source, tmp_path)
            restored = tmp_path / f"restored{round_}.db"
            restored.write_bytes(data)
            counts = sql_counts(restored)
            with sqlite3.connect(restored) as check:
                assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert counts["a"] == counts["b"] == summary["tables"]["a"] == summary["tables"]["b"]
            assert counts["filler"] == 3000
    finally:
        stop.set()
        writer.join(30)
    assert sql_counts(source)["a"] > counts["a"] > 0  # the writer went on during the snapshots


def test_a_reader_that_pins_the_wal_makes_it_fall_back_to_a_copy(tmp_path, monkeypatch):
    import quadra_pipeline.backup.sqlite_stream as module

    monkeypatch.setattr(module, "ATTEMPTS", 2)
    monkeypatch.setattr(module, "BUSY_TIMEOUT_S", 0.2)
    source = tmp_path / "live.db"
    build(source, rows=500)
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO metric (run, value, note) VALUES ('pinned', 1, '')")
    writer.commit()
    reader = sqlite3.connect(source, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM metric").fetchone()  # holds the WAL: it cannot be emptied
    try:
        data, summary = take(source, tmp_path)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
        writer.close()
    assert summary["method"].startswith("sqlite3 online backup API into a scratch copy")
    restored = tmp_path / "restored.db"
    restored.write_bytes(data)
    assert summary["tables"] == sql_counts(restored) == sql_counts(source)
    assert not any((tmp_path / "scratch").iterdir())  # the copy is gone


def test_the_child_process_streams_and_fills_the_part(tmp_path):
    source = tmp_path / "live.db"
    build(source, rows=300)
    part: dict = {}
    with snapshot_stream(source, part, "cannot back up the test database", timeout=60, scratch=tmp_path / "s") as stream:
        data = stream.read()
    assert part["tables"] == sql_counts(source) and part["bytes"] == len(data)


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b""], ids=["garbage", "empty-file-is-fine"])
def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path, content):
    source = tmp_path / "bad.db"
    source.write_bytes(content)
    part: dict = {}
    if not content:  # SQLite treats an empty file as an empty database
        with snapshot_stream(source, part, "cannot back up X", timeout=60, scratch=tmp_path / "s") as stream:
            assert stream.read() == b""
        assert part["tables"] == {}
        return
    with pytest.raises(SqliteSnapshotError) as caught:
        with snapshot_stream(source, part, "cannot back up X", timeout=60, scratch=tmp_path / "s") as stream:
            stream.read()
    message = str(caught.value)
    assert message == "cannot back up X: file is not a database"
    assert "\n" not in message


def test_the_page_counter_refuses_pages_that_do_not_form_the_tree(tmp_path):
    source = tmp_path / "live.db"
    build(source, wal=False, rows=3000)
    data = bytearray(source.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    with sqlite3.connect(source) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metric'").fetchone()[0]
    counter = PageCounter(page_size, len(data) // page_size)
    data[(root - 1) * page_size] = 0  # the root page is no b-tree page any more
    counter.feed(bytes(data))
    with pytest.raises(Exception, match="table metric: root page .* is not a b-tree page"):
        counter.counts({"metric": root})
    short = PageCounter(page_size, len(data) // page_size)
    short.feed(bytes(data[: page_size * 2]))
    with pytest.raises(Exception, match="ended after page 2"):
        short.counts({"metric": root})


# Leaving a table's rows out (the backup catalogue) ----------------------------------------------


def add_catalogue(path: Path, rows: int, *, start: int = 0, long_errors: bool = True) -> None:
    """A `backups`-like table with three indexes; some rows carry errors long enough to overflow."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS backups (id INTEGER PRIMARY KEY, backup_id TEXT UNIQUE, "
                   "created_at TEXT, partition_key TEXT, status TEXT, location TEXT, error TEXT)")
        db.execute("CREATE INDEX IF NOT EXISTS ix_backups_created_at ON backups (created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS ix_backups_error ON backups (error)")  # index cells that overflow
        db.executemany("INSERT INTO backups (backup_id, created_at, partition_key, status, location, error) VALUES (?, ?, ?, ?, ?, ?)",
                       ((f"20261201T{i:06d}Z-{i:08x}", f"2026-12-01 {i}", f"2026-12-01-{i % 24:02d}:00", "verified",
                         "/var/lib/quadra/backups", ("e" * 9000 + str(i)) if long_errors and i % 17 == 0 else None)
                        for i in range(start, start + rows)))


def test_a_left_out_table_streams_empty_and_the_rest_is_the_database(tmp_path):
    """The catalogue's rows change every hour; streamed as an empty table (its pages on the
    free list), the rest of the file byte for byte, a database that passes integrity_check."""
    source = tmp_path / "live.db"
    build(source, rows=3000)
    add_catalogue(source, 800)
    with sqlite3.connect(source) as db:  # free pages of the database's own, not at the file's end
        db.execute("DELETE FROM big WHERE id < 20")
        db.execute("INSERT INTO big (payload) VALUES (zeroblob(10))")
    out = io.BytesIO()
    summary = snapshot(source, tmp_path / "scratch", out, leave_out=("backups",))
    data = out.getvalue()
    assert summary["left_out_data"] == ["backups"]
    restored = tmp_path / "restored.db"
    restored.write_bytes(data)
    expected = sql_counts(source) | {"backups": 0}
    assert summary["tables"] == sql_counts(restored) == expected
    with sqlite3.connect(restored) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*) FROM backups WHERE backup_id > ''").fetchone() == (0,)  # the indexes too
        db.execute("INSERT INTO backups (backup_id) VALUES ('again')")  # a usable table, its free pages reused
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with sqlite3.connect(source) as db:
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        catalogue = db.execute("SELECT count(*) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'backups')"
                               ).fetchone()[0] if _has_dbstat(db) else None
    with sqlite3.connect(restored) as db:
        streamed = db.execute("PRAGMA page_count").fetchone()[0]
        if catalogue is not None:  # every page of the table and its indexes but their roots is free now (or cut off the end)
            roots = db.execute("SELECT count(*) FROM sqlite_master WHERE tbl_name = 'backups' AND rootpage > 0").fetchone()[0]
            assert db.execute("PRAGMA freelist_count").fetchone()[0] + (pages - streamed) == free + catalogue - roots
    assert len(data) == streamed * summary["page_size"] <= source.stat().st_size


def _has_dbstat(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except sqlite3.Error:
        return False


@pytest.mark.parametrize("free_pages", [True, False], ids=["pages-from-the-free-list", "the-file-grows"])
def test_new_catalogue_rows_leave_the_stream_unchanged(tmp_path, free_pages):
    """Rows more in the catalogue (the next backups'), another status, new pages for them, taken
    from the free list or added at the end of the file: the same bytes every time."""
    source = tmp_path / "live.db"
    build(source, rows=3000)
    add_catalogue(source, 40, long_errors=False)
    with sqlite3.connect(source) as db:
        if free_pages:  # a dropped table's pages: on the free list, with its old content
            db.execute("CREATE TABLE dropped AS SELECT * FROM metric").close()
            db.commit()
            db.execute("DROP TABLE dropped").close()
            db.commit()
            assert db.execute("PRAGMA freelist_count").fetchone()[0] > 20
        else:
            db.execute("VACUUM")
            assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0

    def take_left_out() -> bytes:
        out = io.BytesIO()
        snapshot(source, tmp_path / "scratch", out, leave_out=("backups",))
        return out.getvalue()

    before = take_left_out()
    with sqlite3.connect(source) as db:
        db.execute("UPDATE backups SET status = 'failed', error = 'drill' WHERE id = 3")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
    add_catalogue(source, 60, start=40, long_errors=False)  # a few pages more for the table and its indexes
    with sqlite3.connect(source) as db:
        grew = db.execute("PRAGMA page_count").fetchone()[0] - pages
        taken = free - db.execute("PRAGMA freelist_count").fetchone()[0]
    assert (taken > 0 and grew == 0) if free_pages else grew > 0
    assert take_left_out() == before


def test_leaving_out_a_table_that_is_not_there_changes_nothing(tmp_path):
    source = tmp_path / "live.db"
    build(source, rows=300)
    out = io.BytesIO()
    summary = snapshot(source, tmp_path / "scratch", out, leave_out=("backups",))
    assert out.getvalue() == source.read_bytes() and summary.get("left_out_data") == []
