"""Fixtures of the monitoring tests: a clean environment (nothing of the developer's .quadra/ or
.env), and the tools the configuration tests need (promtool, amtool)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No QUADRA_*, DATABASE_URL, MLFLOW_* or DAGSTER_HOME from outside; the working directory is
    tmp_path (no .env); the data home is tmp_path/home."""
    for name in list(os.environ):
        if name.startswith(("QUADRA_", "MLFLOW_")) or name in {"DATABASE_URL", "DAGSTER_HOME"}:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    from quadra_pipeline.monitoring.notify import reset_backoff

    reset_backoff()
    return home


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def tool(name: str, package: str) -> str:
    """The path of a command-line tool; missing: a failure in CI (.ci/run installs it), a skip
    with the reason elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian: apt-get install {package})"
    if in_ci():
        pytest.fail(f"{reason}; CI must have it (.ci/run installs it before make test)", pytrace=False)
    pytest.skip(reason)
