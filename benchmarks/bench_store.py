"""Bulk insert throughput of per-batch metric rows into the store, SQLite and PostgreSQL.

    python benchmarks/bench_store.py                   # 20,000 rows x 3 repeats per backend
    python benchmarks/bench_store.py --rows 100000 --repeat 5
    python benchmarks/bench_store.py --no-postgres

`add_metrics` (one executemany INSERT per call, committed by `session_scope`) is compared with
the anti-pattern it replaces: one ORM object and one commit per row. SQLite runs on a temp file
(WAL, synchronous=NORMAL, as in production); PostgreSQL on a throw-away database created on the
server of `QUADRA_TEST_POSTGRES_URL` (default postgresql+psycopg2://postgres@127.0.0.1:5432/postgres)
and dropped afterwards. An unreachable server is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import create_engine

from quadra_pipeline.store import (
    TrainingMetric,
    add_metrics,
    ensure_schema,
    make_engine,
    session_scope,
    start_training_run,
)
from quadra_pipeline.store.session import mask_url, normalize_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def metric_rows(count: int) -> list[dict]:
    return [
        {
            "batch_number": b,
            "loss": 1.0 / (b + 1),
            "reward": 14.0 + b * 1e-3,
            "reward_per_item": (14.0 + b * 1e-3) / 21,
            "variance": 0.01 * (b % 7),
            "field_mean": -0.5 + b * 1e-5,
            "learning_rate": 0.0011,
            "k_clusters": 3,
            "speedup_factor": 1.1,
            "resonance": 0.25,
            "stability": 0.9,
            "throttle_events": b % 3,
            "texts": 6,
            "batch_seconds": 2.5,
        }
        for b in range(count)
    ]


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench_store_") as folder:
        yield f"sqlite:///{Path(folder) / 'bench.db'}"


@contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    admin = create_engine(
        normalize_url(admin_url), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    name = f"quadra_bench_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield normalize_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.dispose()


def time_bulk(engine, rows: list[dict]) -> float:
    with session_scope(engine) as session:
        run_id = start_training_run(session, field_size=100).id
    started = time.perf_counter()
    with session_scope(engine) as session:
        add_metrics(session, run_id, rows)
    return time.perf_counter() - started


def time_row_by_row(engine, rows: list[dict]) -> float:
    with session_scope(engine) as session:
        run_id = start_training_run(session, field_size=100).id
    started = time.perf_counter()
    for row in rows:
        with session_scope(engine) as session:
            session.add(TrainingMetric(training_run_id=run_id, **row))
    return time.perf_counter() - started


def measure(url: str, rows: int, repeat: int, naive_rows: int) -> list[tuple[str, int, float]]:
    engine = make_engine(url)
    try:
        ensure_schema(engine)
        data = metric_rows(rows)
        time_bulk(engine, data[:100])  # warm-up: connections, statement caches
        results = [("add_metrics (executemany)", rows, statistics.median(time_bulk(engine, data) for _ in range(repeat)))]
        if naive_rows:
            results.append(("one commit per row", naive_rows, time_row_by_row(engine, data[:naive_rows])))
        return results
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per bulk insert (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="bulk inserts per backend; the median is shown")
    parser.add_argument("--naive-rows", type=int, default=500, help="rows for the one-commit-per-row baseline (0: skip)")
    parser.add_argument("--postgres-url", default=os.environ.get("QUADRA_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)

    targets: list[tuple[str, Callable[[], AbstractContextManager[str]]]] = [("sqlite", sqlite_url)]
    if not args.no_postgres:
        targets.append(("postgresql", lambda: postgres_url(args.postgres_url)))

    print(f"metric rows: {args.rows:,} per bulk insert, median of {args.repeat}; python {sys.version.split()[0]}")
    header = f"{'backend':<11} {'method':<27} {'rows':>8} {'seconds':>9} {'rows/s':>10}"
    print(header)
    print("-" * len(header))
    for backend, database in targets:
        try:
            with database() as url:
                results = measure(url, args.rows, args.repeat, args.naive_rows)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other backend
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            where = mask_url(args.postgres_url) if backend == "postgresql" else backend
            print(f"{backend:<11} skipped: {where}: {first}")
            continue
        for method, count, seconds in results:
            print(f"{backend:<11} {method:<27} {count:>8,} {seconds:>9.3f} {count / seconds:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
