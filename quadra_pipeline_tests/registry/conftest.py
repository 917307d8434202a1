"""Fixtures: a real MLflow tracking store (SQLite in a temp dir, artifacts there too), a real
`mlflow server` on loopback (started once per session, only if a test asks for it), and the
project's SQL store. No mocks.

Isolation without paying for a new store per test (the first touch of a new MLflow store runs
its migrations, ~2 s): the stores are shared per session, and every test registers under a
model name of its own, so versions, aliases and alias history never mix between tests.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch

from quadra_pipeline.keys import KeyPair, generate
from quadra_pipeline.model import FieldTrainer, QuadraModel, save_checkpoint
from quadra_pipeline.registry import ModelRegistry
from quadra_pipeline.store import ensure_schema, make_engine

FIELD_SIZE = 16
MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Tracking:
    uri: str
    artifact_root: Path | None  # None for a server: it stores the artifacts itself
    kind: str


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sqlite_tracking(tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    tracking = Tracking(f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts", "sqlite")
    ModelRegistry(tracking.uri, tracking.artifact_root).check_available()  # migrate once
    return tracking


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(folder: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Tracking]:
    """A lean `mlflow server` (1 worker, no job runner) on a free loopback port, with `args`
    added to its command line and `env` to its environment; stopped on leaving."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", **(env or {}))
    log_file = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [str(MLFLOW), "server", *args, "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, env=environment, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}: "
                            f"{(folder / 'server.log').read_text()[-2000:]}", pytrace=False)
            try:
                if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health within {SERVER_START_TIMEOUT_S} s", pytrace=False)
            time.sleep(0.25)
        yield Tracking(uri, None, "server")
    finally:
        _stop(process)
        log_file.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    """A lean `mlflow server` (1 worker, no job runner) on a free loopback port."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as tracking:
        yield tracking


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then wait."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def tracking(sqlite_tracking: Tracking) -> Tracking:
    """The tracking store the core tests run against (test_server.py overrides it)."""
    return sqlite_tracking


_names = itertools.count(1)
_SESSION = secrets.token_hex(3)


@pytest.fixture
def model_name() -> str:
    return f"quadra-matrix-test-{_SESSION}-{next(_names)}"


@pytest.fixture(scope="session")
def signing_keys() -> KeyPair:
    """A model-signing pair made for the test session (ECDSA P-256)."""
    return generate("ec-p256")


@pytest.fixture
def registry(tracking: Tracking, model_name: str, signing_keys: KeyPair) -> ModelRegistry:
    return ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name, keys=signing_keys)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory):
    """The project's SQL store, migrated once (tests stay apart by model name)."""
    folder = tmp_path_factory.mktemp("store")
    engine = make_engine(f"sqlite:///{folder / 'quadra.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


def make_model(field_size: int = FIELD_SIZE, seed: int = 0) -> QuadraModel:
    return QuadraModel(field_size, seed=seed)


def write_checkpoint(path: Path, model: QuadraModel) -> Path:
    save_checkpoint(path, FieldTrainer(model), config={"field_size": model.field_size, "seed": 0})
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[QuadraModel, Path]:
    """A model and its checkpoint (ours), shared read-only."""
    model = make_model()
    return model, write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", model)


@contextlib.contextmanager
def mlflow_fluent_api(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (`mlflow.pyfunc.load_model("models:/...")`, as a user of the
    registry would call it) at `tracking_uri` for the block; the package itself never does."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


@pytest.fixture(autouse=True)
def _no_stray_mlflow_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in an empty folder and fail if MLflow fell back to its defaults there
    (`./mlflow.db`, `./mlruns`): every call must use the store it was given."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    stray = sorted(p.name for p in folder.iterdir() if p.name in ("mlflow.db", "mlruns", "mlartifacts"))
    assert not stray, f"MLflow wrote {stray} into the working directory"
