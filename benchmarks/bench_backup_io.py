"""Bytes read and written by one hourly backup run, as the Dagster asset makes it.

    python benchmarks/bench_backup_io.py [--db-mb 200] [--dir /tmp]

A data home with a --db-mb SQLite project database (random 1 KiB rows) and 20 MB of
checkpoints; then three hourly runs: the first backup, one after 5 scattered rows changed, one
with nothing changed. Each run is what the `backup` asset does: `BackupService.create`, the
`integrity` check (the new backup verified, this hour's share of the rotation re-read) and the
`restore_drill` check.
Read and written bytes come from /proc/self/io: `rchar`/`wchar` count every byte through
read()/write() (page cache included: the data here is in cache, so the disk counters would say
little), including the child processes waited for (the SQLite snapshot reader: its pipe is
shown apart); the repository's growth is measured on disk. Runs against whatever
`quadra_pipeline` is importable, so the same script measures an older checkout too.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path


def io_counters() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        values[key] = int(value)
    return values


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build_home(home: Path, db_mb: int) -> None:
    from quadra_pipeline.store import ensure_schema, make_engine

    home.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{home / 'quadra.db'}")
    ensure_schema(engine)  # the project's tables (the backup catalogue among them), as in a real home
    engine.dispose()
    db = sqlite3.connect(home / "quadra.db")
    db.execute("create table filler (id integer primary key, payload blob)")
    rows = db_mb * 1024
    db.executemany("insert into filler values (?, ?)", ((i, os.urandom(1000)) for i in range(rows)))
    db.commit()
    db.close()
    checkpoints = home / "checkpoints" / "run-1"
    checkpoints.mkdir(parents=True)
    for index in range(4):
        (checkpoints / f"part{index}.pt").write_bytes(os.urandom(5 << 20))


def change_rows(home: Path, count: int, seed: int) -> None:
    db = sqlite3.connect(home / "quadra.db")
    total = db.execute("select count(*) from filler").fetchone()[0]
    for row in random.Random(seed).sample(range(total), count):
        db.execute("update filler set payload = ? where id = ?", (os.urandom(1000), row))
    db.commit()
    db.close()


def hourly(service, label: str, work: Path) -> dict[str, object]:
    """One hourly run, its I/O split by step: create, the integrity check, the restore drill.
    The counters include the child processes this one waited for (Linux adds a reaped child's
    counters to its parent's): the SQLite snapshot reader (and pg_dump) hand the databases over
    a pipe, so those bytes are counted twice in `rchar` (the reader's read of the file, and this
    process's read of the pipe) and once in `wchar` (the reader's write to the pipe): `pipe_mb`."""
    from quadra_pipeline.backup.drill import restore_drill

    steps: dict[str, tuple[int, int]] = {}
    size_before = tree_bytes(service.repository.root) if service.repository.root.exists() else 0
    started = time.perf_counter()
    before = io_counters()
    result = service.create(partition_key=label)
    after = io_counters()
    streamed = [e for e in result.manifest.files if e.path.split("/", 1)[0] in ("project-db", "mlflow-db")]
    pipe = sum(e.size for e in streamed) if hasattr(result, "added_chunks") else 0  # format 2 copied the files
    steps["create"] = (after["rchar"] - before["rchar"], after["wchar"] - before["wchar"])
    before = after
    if hasattr(service, "hourly"):  # the integrity check as `BackupService.hourly` runs it: this hour's share of
        from quadra_pipeline.backup.rotation import Rotation  # every stored chunk, the new backup, the history

        rotation = Rotation(service.repository, service.settings.backup_verify_runs).run()
        reports = [service.repository.verify(result.manifest.backup_id, read=set(result.added_chunks)), rotation]
    elif hasattr(result, "added_chunks"):  # format 3 before the rotation covered every stored chunk
        reports = service.verify([result.manifest.backup_id], deep="subset", also_read=set(result.added_chunks))
    else:  # format 2 (an older checkout)
        reports = service.verify([result.manifest.backup_id])
    after = io_counters()
    steps["integrity"] = (after["rchar"] - before["rchar"], after["wchar"] - before["wchar"])
    before = after
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        drill = restore_drill(service, result.manifest.backup_id, Path(tmp))
    after = io_counters()
    steps["drill"] = (after["rchar"] - before["rchar"], after["wchar"] - before["wchar"])
    seconds = time.perf_counter() - started
    assert all(r.ok for r in reports) and drill.ok, ([r.problems for r in reports], drill.problems)
    return {
        "run": label,
        "read_mb": sum(r for r, _ in steps.values()) / 1e6,
        "written_mb": sum(w for _, w in steps.values()) / 1e6,
        "steps": " / ".join(f"{r / 1e6:.0f}:{w / 1e6:.0f}" for r, w in steps.values()),
        "pipe_mb": pipe / 1e6,
        "repo_growth_mb": (tree_bytes(service.repository.root) - size_before) / 1e6,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-mb", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where to build the data home (default: the temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-io-", dir=args.dir))
    home = work / "home"
    build_home(home, args.db_mb)
    os.environ.update(QUADRA_HOME=str(home), QUADRA_ENV="development")
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_BACKUP_DIR"):
        os.environ.pop(name, None)

    from quadra_pipeline.backup.service import BackupService
    from quadra_pipeline.settings import load_settings

    service = BackupService(load_settings())
    data_mb = (tree_bytes(home) - 0) / 1e6
    rows = [hourly(service, "first backup", work)]
    change_rows(home, 5, seed=1)
    rows.append(hourly(service, "5 rows changed", work))
    rows.append(hourly(service, "nothing changed", work))
    print(f"data home: {data_mb:.0f} MB ({args.db_mb} MB SQLite database + 20 MB of checkpoints)")
    print("| hourly run | read MB (rchar) | written MB (wchar) | read:written MB by step (create / integrity / drill) | of which a pipe, MB | repository growth MB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['read_mb']:.0f} | {row['written_mb']:.0f} | {row['steps']} | {row['pipe_mb']:.0f} | "
              f"{row['repo_growth_mb']:.1f} | {row['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
