"""A small but real data home to back up and break: trained model, metrics, MLflow registry
with a champion, checkpoints. Built with the project's own pieces (no Dagster: faster)."""

import os
import subprocess
import sys
from pathlib import Path

QUADRA = str(Path(sys.executable).parent / "quadra")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUADRA_") and k not in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}}
    env.update(QUADRA_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true", **extra)
    return env


def quadra(home: Path, *args, cwd: Path | None = None, check: int | None = 0, **extra):
    result = subprocess.run([QUADRA, *map(str, args)], env=cli_env(home, **extra), cwd=cwd or home.parent,
                            capture_output=True, text=True, timeout=600)
    if check is not None:
        assert result.returncode == check, f"quadra {' '.join(map(str, args))}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def build_live_home(home: Path, versions: int = 2) -> None:
    """Train `versions` small models, register each, make the first champion."""
    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline.registry.service import promote, register_and_mirror
    from quadra_pipeline.settings import load_settings
    from quadra_pipeline.store import ensure_schema, make_engine, session_scope, start_training_run
    from quadra_pipeline.tracking import MetricLogger
    from quadra_pipeline.model import load_checkpoint
    from quadra_pipeline.training import TrainingConfig, run_training

    settings = load_settings(home=str(home))
    engine = make_engine(settings.database_url)
    ensure_schema(engine)
    registry = ModelRegistry.from_settings(settings)  # signs with the data home's own key pair
    for index in range(versions):
        with session_scope(engine) as session:
            run_id = start_training_run(session, field_size=16, seed=index).id
        mlflow_run = registry.start_run(f"live-{index}", tags={"purpose": "test"})
        logger = MetricLogger(engine, run_id, registry, mlflow_run)
        outcome = run_training(TrainingConfig(field_size=16, batches=3, seed=index), settings.checkpoint_dir / f"run{index}", on_batch=[logger])
        logger.close()
        registry.end_run(mlflow_run)
        register_and_mirror(registry, engine, run_id=mlflow_run, model=load_checkpoint(outcome.checkpoint).model,
                            checkpoint_path=outcome.checkpoint, tags={"data_fingerprint": outcome.source["fingerprint"]},
                            training_run=run_id)
    promote(registry, engine, 1, moved_by="test", reason="first")
    engine.dispose()


def row_counts(db: Path) -> dict[str, int]:
    from quadra_pipeline.backup.service import table_counts  # the drill's own counter

    return table_counts(db)


#: (scenario, recovery seconds, what was checked) of every drill that ran; printed at the end.
DRILL_TIMES: list[tuple[str, float, str]] = []
