"""Fixtures for the serving tests: a real MLflow store (SQLite, once per session), versions
registered and signed as the pipeline registers them, promotions as `quadra model promote` makes
them (verified, recorded in the project's SQL store), and the service itself, in a thread of
the test process on a loopback port (or, in test_cli_serve.py, as `quadra serve` processes).
No mocks: every request goes over HTTP."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from quadra_pipeline.keys import KeyPair, Keyring, generate
from quadra_pipeline.registry import ModelRegistry, promote
from quadra_pipeline.serving.config import ServingConfig
from quadra_pipeline.serving.service import Serving
from quadra_pipeline.store import ensure_schema, make_engine
from quadra_pipeline_tests.registry.conftest import (
    Tracking,
    make_model,
    write_checkpoint,
)

FIELD_SIZE = 16
TOKEN = "t0ken-" + secrets.token_hex(16)
FOLLOW_LIMIT_S = 10.0  # the bound: an alias move is served within 10 s


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def serving_tracking(tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    folder = tmp_path_factory.mktemp("serving-mlflow")
    tracking = Tracking(f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts", "sqlite")
    ModelRegistry(tracking.uri, tracking.artifact_root).check_available()  # migrate once
    return tracking


@pytest.fixture(scope="session")
def signing_keys() -> KeyPair:
    return generate("ec-p256")


@pytest.fixture(scope="session")
def serving_engine(tmp_path_factory: pytest.TempPathFactory):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('serving-store') / 'quadra.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


_names = itertools.count(1)
_SESSION = secrets.token_hex(3)


def new_model_name() -> str:
    return f"quadra-serving-test-{_SESSION}-{next(_names)}"


@dataclass
class Models:
    """One registered model of the test: register versions, promote them, as the pipeline does."""

    registry: ModelRegistry  # holds the signing key: the pipeline's side
    engine: Any
    folder: Path
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(0))

    @property
    def name(self) -> str:
        return self.registry.model_name

    def register(self, seed: int | None = None, registry: ModelRegistry | None = None) -> int:
        seed = next(self.seeds) if seed is None else seed
        model = make_model(FIELD_SIZE, seed=seed)
        checkpoint = write_checkpoint(self.folder / f"checkpoint-{seed}-{secrets.token_hex(3)}.pt", model)
        registry = registry or self.registry
        with registry.run("train", tags={"source": "serving-test"}) as run_id:
            return registry.register(run_id, model, checkpoint, tags={"source": "serving-test"}).version

    def promote(self, version: int, reason: str = "serving test") -> None:
        promote(self.registry, self.engine, version, moved_by="cli:serving-test", reason=reason)

    def reader(self, keyring: Keyring) -> ModelRegistry:
        """The registry as the service sees it: no private key, the keyring only."""
        return ModelRegistry(self.registry.tracking_uri, model_name=self.name, keyring=keyring, max_retries=1,
                             timeout_seconds=5.0)


@pytest.fixture
def models(serving_tracking, serving_engine, signing_keys, tmp_path) -> Models:
    registry = ModelRegistry(serving_tracking.uri, serving_tracking.artifact_root, model_name=new_model_name(),
                             keys=signing_keys)
    return Models(registry, serving_engine, tmp_path)


def keyring_of(*pairs: KeyPair) -> Keyring:
    return Keyring("ec-p256", pairs)


@contextlib.contextmanager
def serving(models: Models, keyring: Keyring, tmp_path: Path, registry: ModelRegistry | None = None,
            **config: Any) -> Iterator["Client"]:
    """The service on a loopback port, in this process (one worker), polling every 0.5 s unless
    told; reading the registry as `registry` (default: the models' store, no credentials)."""
    settings = dict(model=models.name, poll_seconds=0.5, cache_dir=tmp_path / "serving-cache", port=0)
    settings.update(config)
    service = Serving(ServingConfig(**settings), registry or models.reader(keyring), keyring)
    with service.in_thread() as url:
        yield Client(url, service, token=settings.get("token"))


@dataclass
class Client:
    url: str
    service: Serving
    token: bytes | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def headers(self, token: bytes | str | None = "default") -> dict[str, str]:
        if token == "default":
            token = self.token
        if token is None:
            return {}
        return {"Authorization": f"Bearer {token.decode() if isinstance(token, bytes) else token}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        return self.session.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        return self.session.post(self.url + path, timeout=10, **kwargs)

    def invoke(self, payload: Any) -> requests.Response:
        return self.post("/invocations", json=payload)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "the condition") -> float:
        """Seconds until `predicate()` held (polling /health and friends every 50 ms)."""
        start = time.monotonic()
        while True:
            if predicate():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what} did not happen within {timeout} s; health: {self.get('/health').text}")
            time.sleep(0.05)

    def wait_ready(self, version: int | None = None, timeout: float = 30.0) -> None:
        def ready() -> bool:
            health = self.get("/health")
            return health.status_code == 200 and (version is None or health.json()["version"] == version)
        self.wait_for(ready, timeout, f"version {version} being served")


class LoopbackLoad:
    """A client that sends requests one after another while a test moves the alias: every
    answer's status and version, with when it came."""

    def __init__(self, client: Client, payload: Any) -> None:
        self.client = client
        self.payload = payload
        self.answers: list[tuple[float, int, int | None, str]] = []  # (time, status, version, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = session.post(self.client.url + "/invocations", json=self.payload,
                                        headers=self.client.headers(), timeout=10)
                version = response.headers.get("X-Quadra-Model-Version")
                self.answers.append((time.monotonic(), response.status_code, int(version) if version else None,
                                     "" if response.ok else response.text[:200]))
            except requests.RequestException as exc:
                self.answers.append((time.monotonic(), 0, None, repr(exc)))

    def __enter__(self) -> "LoopbackLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def first_answer_from(self, version: int, after: float) -> float | None:
        return next((t - after for t, status, v, _ in self.answers if t >= after and v == version and status == 200), None)

    def failures(self) -> list[tuple[float, int, int | None, str]]:
        return [a for a in self.answers if a[1] != 200]

    def versions(self) -> list[int | None]:
        return [v for _, _, v, _ in self.answers]
