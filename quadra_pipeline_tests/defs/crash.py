"""Helpers for the crash tests: real `dagster` processes killed for real, and what they left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from quadra_pipeline_tests.defs.conftest import REPO_ROOT
from quadra_pipeline_tests.defs.test_dagster_cli import BIN

LONG_RUN = """
ops:
  corpus:
    config: {{training_rows: {rows}, held_out_rows: 50}}
  train_model:
    config: {{batches: {batches}, field_size: 24, log_every: 1, checkpoint_every: 10{extra}}}
"""
#: The champion gate open to any model (run config to append): the crash tests check recovery, not
#: the model, and which of two runs registers first (and so becomes the champion the other is
#: gated against) depends on the order the daemon dequeues them.
GATE_OPEN = """  registered_model:
    config: {tolerance: 1.0}
"""


def run_yaml(path: Path, batches: int, **extra: object) -> Path:
    text = "".join(f", {key}: {value!r}" if isinstance(value, str) else f", {key}: {value}" for key, value in extra.items())
    path.write_text(LONG_RUN.format(rows=batches * 10 + 100, batches=batches, extra=text.replace("'", '"')))
    return path


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A `dagster ...` command in its own process group, its output to `log`."""
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=REPO_ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_line(log: Path, pattern: str, process: subprocess.Popen | None = None, timeout: float = 240) -> re.Match:
    deadline = time.monotonic() + timeout
    compiled = re.compile(pattern)
    while time.monotonic() < deadline:
        found = list(compiled.finditer(log.read_text(errors="replace")))
        if found:
            return found[-1]
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}) before {pattern!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not seen within {timeout} s:\n{log.read_text()[-3000:]}")


def last_batch_logged(log: Path) -> int:
    numbers = [int(m.group(1)) for m in re.finditer(r"batch (\d+) of \d+", log.read_text(errors="replace"))]
    return max(numbers, default=0)


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runs_of(env: dict[str, str], job: str = "training_job") -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return sorted(instance.get_runs(filters=dg.RunsFilter(job_name=job)), key=lambda r: r.run_id)


def the_run(env: dict[str, str], run_id: str) -> dg.DagsterRun:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return instance.get_run_by_id(run_id)


def sql(env: dict[str, str], query: str, **params) -> list[dict]:
    engine = sa.create_engine(f"sqlite:///{Path(env['QUADRA_HOME']) / 'quadra.db'}")
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sa.text(query), params)]
    finally:
        engine.dispose()


def training_run(env: dict[str, str], dagster_run_id: str) -> dict:
    [row] = sql(env, "select * from training_runs where external_run_id = :r", r=dagster_run_id)
    return row


def batches_in_sql(env: dict[str, str], training_run_id: int) -> list[int]:
    rows = sql(env, "select batch_number from training_metrics where training_run_id = :r order by batch_number", r=training_run_id)
    return [r["batch_number"] for r in rows]


def mlflow_steps(env: dict[str, str], mlflow_run_id: str) -> list[int]:
    from quadra_pipeline.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{Path(env['QUADRA_HOME']) / 'mlflow.db'}", str(Path(env["QUADRA_HOME"]) / "mlartifacts"))
    return sorted(registry.metric_steps(mlflow_run_id, "loss"))


def mlflow_status(env: dict[str, str], mlflow_run_id: str) -> str:
    from quadra_pipeline.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{Path(env['QUADRA_HOME']) / 'mlflow.db'}", str(Path(env["QUADRA_HOME"]) / "mlartifacts"))
    return registry.run_status(mlflow_run_id)
