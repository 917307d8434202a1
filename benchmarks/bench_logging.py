"""Overhead of per-batch metric logging (SQL store + MLflow) on training time, at N=100.

    python benchmarks/bench_logging.py [--batches 60] [--repeats 3] [--database-url URL]

Trains the same configuration with and without the metric logger the Dagster asset uses
(`quadra_pipeline.tracking.MetricLogger`: each batch's row committed to `training_metrics` when
the batch ends, durable at once; `log_batch` into a SQLite MLflow store every `--flush-every`
batches), alternating the two so machine noise hits both, and prints the median wall time of
each, the logger's own writing time (measured inside it) and the overhead ratio. The project
database is SQLite in a temp dir unless `--database-url` names another (e.g. PostgreSQL).
Target: at most 5%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flush-every", type=int, default=10)
    parser.add_argument("--database-url", help="project database (default: SQLite in a temp dir)")
    args = parser.parse_args()

    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline.store import ensure_schema, make_engine, session_scope, start_training_run
    from quadra_pipeline.tracking import MetricLogger
    from quadra_pipeline.training import TrainingConfig, run_training

    work = Path(tempfile.mkdtemp(prefix="bench-logging-"))
    engine = make_engine(args.database_url or f"sqlite:///{work / 'quadra.db'}")
    ensure_schema(engine)
    registry = ModelRegistry(f"sqlite:///{work / 'mlflow.db'}", work / "artifacts")
    registry.check_available()
    config = TrainingConfig(field_size=100, batches=args.batches, rows_per_batch=10, seed=0, checkpoint_every=10**6)

    run_training(TrainingConfig(field_size=100, batches=2), work / "warmup")  # imports, first-touch costs
    plain, logged = [], []
    flush_seconds = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        run_training(config, work / f"plain{repeat}")
        plain.append(time.perf_counter() - started)

        with session_scope(engine) as session:
            run_id = start_training_run(session, field_size=100, seed=0).id
        mlflow_run = registry.start_run(f"bench-{repeat}", tags={"bench": "logging"})
        logger = MetricLogger(engine, run_id, registry, mlflow_run, flush_every=args.flush_every)
        started = time.perf_counter()
        run_training(config, work / f"logged{repeat}", on_batch=[logger])
        logger.close()
        logged.append(time.perf_counter() - started)
        flush_seconds.append(logger.seconds)
        registry.end_run(mlflow_run)
        assert registry.metric_history_length(mlflow_run, "loss") == args.batches

    a, b = statistics.median(plain), statistics.median(logged)
    overhead = (b - a) / a
    own = statistics.median(flush_seconds)
    database = engine.url.get_backend_name()
    print("| N | batches | database | SQL commit | MLflow log_batch every | training s (median) | training + logging s "
          "| logging's own s (share) | overhead |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| 100 | {args.batches} | {database} | every batch | {args.flush_every} | {a:.3f} | {b:.3f} | "
        f"{own:.3f} ({100 * own / a:.1f}%) | {100 * overhead:+.1f}% |"
    )
    verdict = "meets" if overhead <= TARGET else "MISSES"
    print(f"\nlogging overhead {100 * overhead:+.1f}% {verdict} the target of at most {100 * TARGET:.0f}%")
    return 0 if overhead <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
