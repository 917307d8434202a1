"""What an unchanged hour costs: hourly backups of a data home where nothing changes.

    python benchmarks/bench_backup_hours.py [--db-mb 50] [--hours 24] [--dir /tmp] [--database-url URL]

A data home with a --db-mb project database (the project's tables, the backup catalogue among
them, plus random 1 KiB rows; SQLite by default, or the PostgreSQL database of --database-url,
which is filled and emptied again) and 20 MB of checkpoints; one first backup, then --hours
hourly runs with nothing changed. Each run is what the `backup` asset does, the catalogue
included (each backup adds its row to the project database it copies, and the checks mark it):
`BackupService.hourly` where it exists, else (an older checkout) `create`, the `integrity`
check's `verify` and the restore drill. For every unchanged hour: the bytes the repository
grew by (the files' sizes, and on disk), the new chunks, and the seconds. Runs against whatever
`quadra_pipeline` is importable, so the same script measures an older checkout too
(`PYTHONPATH=<checkout> python benchmarks/bench_backup_hours.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backup_io import build_home, tree_bytes  # noqa: E402


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def fill_postgres(url: str, db_mb: int) -> None:
    import sqlalchemy as sa

    from quadra_pipeline.store import ensure_schema, make_engine

    engine = make_engine(url)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("drop table if exists filler")
        connection.exec_driver_sql("create table filler (id integer primary key, payload bytea)")
        connection.execute(sa.text("insert into filler select i, decode(string_agg(lpad(to_hex((random() * 255)::int), 2, '0'), ''), 'hex') "
                                   "from generate_series(1, :rows) i, generate_series(1, 1000) j group by i"), {"rows": db_mb * 1024})
        connection.exec_driver_sql("delete from backups")
    engine.dispose()


def server_reads(url: str) -> dict[str, int]:
    """What the live database's tables have been read for so far (pg_stat_user_tables): sequential
    scans, the rows they returned, index scans and the rows fetched through them."""
    import sqlalchemy as sa

    time.sleep(0.5)  # (a backend's counters reach the shared statistics when it ends)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        row = connection.exec_driver_sql(
            "SELECT coalesce(sum(seq_scan), 0), coalesce(sum(seq_tup_read), 0), coalesce(sum(idx_scan), 0), "
            "coalesce(sum(idx_tup_fetch), 0), count(*) FROM pg_stat_user_tables").one()
        blocks = connection.exec_driver_sql(
            "SELECT coalesce(sum(heap_blks_read + heap_blks_hit), 0) FROM pg_statio_user_tables").scalar_one()
    engine.dispose()
    return {"seq_scans": int(row[0]), "rows_scanned": int(row[1]), "index_scans": int(row[2]), "rows_fetched": int(row[3]),
            "tables": int(row[4]), "heap_blocks": int(blocks)}


ROTATION: list[object] = []  # each hour's RotationReport (this checkout's hourly run)


def run_hour(service, partition_key: str, work: Path, index: int = 0) -> tuple[object, bool, object]:
    hourly = getattr(service, "hourly", None)
    if hourly is not None:  # (the runs come one after another: the rotation is told which hour each stands for)
        run = hourly(partition_key=partition_key, workdir=work, hour=int(time.time() // 3600) + index)
        ROTATION.append(run.rotation)
        return run.create, run.good, run.drill
    from quadra_pipeline.backup.drill import restore_drill  # an older checkout: what its asset did

    result = service.create(partition_key=partition_key)
    reports = service.verify([result.manifest.backup_id], deep="subset", also_read=set(result.added_chunks))
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        drill = restore_drill(service, result.manifest.backup_id, Path(tmp))
    return result, all(r.ok for r in reports) and drill.ok, drill


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-mb", type=int, default=50)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--dir", default=None, help="where to build the data home (default: the temp folder)")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL project database (filled, then emptied)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-hours-", dir=args.dir))
    home = work / "home"
    build_home(home, 1 if args.database_url else args.db_mb)
    os.environ.update(QUADRA_HOME=str(home), QUADRA_ENV="development")
    for name in ("DATABASE_URL", "QUADRA_BACKUP_DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_BACKUP_DIR"):
        os.environ.pop(name, None)
    if args.database_url:
        fill_postgres(args.database_url, args.db_mb)
        os.environ["DATABASE_URL"] = args.database_url

    from quadra_pipeline.backup.service import BackupService
    from quadra_pipeline.settings import load_settings

    service = BackupService(load_settings())
    root = service.repository.root
    first, good, _ = run_hour(service, "first", work)
    assert good, "the first backup failed its checks"
    rows, loads, drills = [], [], []
    for hour in range(args.hours):
        size, disk = tree_bytes(root), disk_bytes(root)
        before = server_reads(args.database_url) if args.database_url else None
        started = time.perf_counter()
        result, good, drill = run_hour(service, f"hour {hour + 1}", work, hour + 1)
        seconds = time.perf_counter() - started
        assert good, f"hour {hour + 1} failed its checks"
        rows.append((tree_bytes(root) - size, disk_bytes(root) - disk, len(result.added_chunks), result.stored_bytes, seconds))
        drills.append((drill.seconds, drill.checked.get("scratch_bytes"), drill.checked.get("project-db", {})))
        if before is not None:
            after = server_reads(args.database_url)
            loads.append({k: after[k] - before[k] for k in after if k != "tables"} | {"tables": after["tables"]})
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"data home: {args.db_mb} MB {database} project database + 20 MB of checkpoints; first backup "
          f"{tree_bytes(root) - sum(r[0] for r in rows):,} bytes; {args.hours} unchanged hours:")
    print("| hour | repository growth, bytes (files) | on disk, bytes | new chunks | new chunk bytes | seconds |")
    print("|---|---|---|---|---|---|")
    for index, (grown, on_disk, chunks, stored, seconds) in enumerate(rows, 1):
        print(f"| {index} | {grown:,} | {on_disk:,} | {chunks} | {stored:,} | {seconds:.2f} |")
    grown = [r[0] for r in rows]
    print(f"per unchanged hour: mean {statistics.mean(grown) / 1024:.1f} KiB, median {statistics.median(grown) / 1024:.1f} KiB, "
          f"max {max(grown) / 1024:.1f} KiB (files); on disk mean {statistics.mean(r[1] for r in rows) / 1024:.1f} KiB; "
          f"{statistics.median(r[4] for r in rows):.2f} s each (median)")
    drill_seconds = statistics.median(d[0] for d in drills)
    scratch = [d[1] for d in drills if d[1] is not None]
    print(f"restore drill: {drill_seconds:.2f} s (median), scratch "
          + (f"{statistics.median(scratch) / 1e6:.1f} MB (files and scratch databases)" if scratch else "size not reported (older checkout)")
          + (f"; the project database's scratch copy {drills[-1][2].get('scratch_database_bytes', 0) / 1e6:.1f} MB"
             if args.database_url and isinstance(drills[-1][2], dict) and drills[-1][2].get("scratch_database_bytes") else ""))
    if ROTATION:
        hours = ROTATION[-args.hours:]
        print(f"integrity's rotation: {statistics.median(r.chunks_read for r in hours):.0f} of {hours[-1].chunks_stored} stored "
              f"chunks re-read per hour (median; {statistics.median(r.bytes_read for r in hours) / 1e6:.1f} MB), "
              f"{sum(r.chunks_read for r in hours)} over the {args.hours} hours; every chunk re-read within "
              f"{hours[-1].oldest_hours if hours[-1].oldest_hours is not None else 'not yet a whole period'} hours")
    if loads:
        print("load on the live PostgreSQL database per hourly run (pg_stat_user_tables, median over the hours): "
              + ", ".join(f"{k} {statistics.median(x[k] for x in loads):,.0f}" for k in loads[0] if k != "tables")
              + f" ({loads[0]['tables']} tables)")
    if args.database_url:
        import sqlalchemy as sa

        engine = sa.create_engine(args.database_url)
        with engine.begin() as connection:
            connection.exec_driver_sql("drop table if exists filler")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
