"""Bad inputs: unreachable or wrong servers fail fast with one clear line (no password in it) and
leave nothing behind; bad arguments are refused before anything is written."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
from sqlalchemy import func, select

from quadra_pipeline.registry import (
    ModelRegistry,
    RegistryError,
    RegistryUnavailableError,
    import_checkpoint,
    mask_secrets,
    promote,
    register_and_mirror,
)
from quadra_pipeline.registry.versions import version_number as _version_number
from quadra_pipeline.store import ModelAliasEvent, ModelVersion, session_scope
from quadra_pipeline_tests.model.test_checkpoint import write_original

UNREACHABLE = "http://127.0.0.1:1"
BOUND_S = 6  # "a few seconds, not minutes"


def count_rows(engine, model_name):
    with session_scope(engine) as session:
        versions = session.scalar(select(func.count()).select_from(ModelVersion).where(
            ModelVersion.registered_model_name == model_name))
        events = session.scalar(select(func.count()).select_from(ModelAliasEvent).where(
            ModelAliasEvent.model_name == model_name))
    return versions, events


def test_unreachable_server_fails_fast_with_one_line():
    registry = ModelRegistry(UNREACHABLE)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as caught:
        registry.check_available()
    assert time.monotonic() - start < BOUND_S
    assert str(caught.value) == (
        "MLflow tracking server at http://127.0.0.1:1 is unreachable after 3 attempts (Connection refused)")


def test_the_password_in_a_server_uri_is_never_shown():
    registry = ModelRegistry("http://alice:s3cret-pw@127.0.0.1:1", max_retries=0)
    with pytest.raises(RegistryUnavailableError) as caught:
        registry.experiment_id()
    assert "s3cret" not in str(caught.value) and "alice:***@127.0.0.1:1" in str(caught.value)
    assert "after 1 attempt (" in str(caught.value)
    assert "s3cret" not in repr(registry)


def test_unreachable_server_registers_nothing(engine, trained, model_name, tmp_path, signing_keys):
    model, checkpoint = trained
    registry = ModelRegistry(UNREACHABLE, model_name=model_name, keys=signing_keys)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="unreachable after 3 attempts"):
        register_and_mirror(registry, engine, run_id="0" * 32, model=model, checkpoint_path=checkpoint,
                            tags={"source": "test"}, description="", metrics={})
    original = tmp_path / "orig.pth"
    write_original(original, 100)
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        import_checkpoint(registry, engine, original, description="", moved_by="cli:test")
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        promote(registry, engine, 1, moved_by="cli:test", reason=None)
    assert time.monotonic() - start < 3 * BOUND_S
    assert count_rows(engine, model_name) == (0, 0)


def test_mlflow_calls_themselves_are_bounded():
    """Past the /health probe (the server died in between), MLflow's own HTTP retries (7, with
    exponential backoff: minutes, by default) are bounded by the registry's settings."""
    registry = ModelRegistry(UNREACHABLE, max_retries=1, timeout_seconds=1)
    registry._available = True  # as if /health had answered a moment ago
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as caught:
        registry.aliases()
    assert time.monotonic() - start < BOUND_S
    assert "is unreachable while read the aliases" in str(caught.value)
    assert "(Connection refused)" in str(caught.value)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        registry = ModelRegistry(f"http://127.0.0.1:{port}", max_retries=1, timeout_seconds=0.5)
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match=r"after 2 attempts \(no answer within 0.5 s\)"):
            registry.check_available()
        assert time.monotonic() - start < BOUND_S


def test_a_server_that_is_not_mlflow_is_refused_at_once():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        registry = ModelRegistry(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(RegistryUnavailableError, match=r"not usable \(/health answered HTTP 404; is this"):
            registry.check_available()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_database_store_fails_fast_without_the_password():
    """MLflow retries opening a database store for ~100 s on its own; the registry checks first."""
    registry = ModelRegistry("postgresql+psycopg2://mlflow:db-pa55@127.0.0.1:1/mlflow", "/tmp/unused")
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=r"mlflow:\*\*\*@127.0.0.1:1/mlflow is unreachable after 3"):
        registry.check_available()
    assert time.monotonic() - start < BOUND_S


def test_a_sqlite_store_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    registry = ModelRegistry(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    with pytest.raises(RegistryUnavailableError, match="cannot create its folder"):
        registry.check_available()


def test_a_database_store_needs_an_artifact_root():
    registry = ModelRegistry("postgresql+psycopg2://u@127.0.0.1:1/db")
    with pytest.raises(RegistryError, match="an artifact root is needed .* ./mlruns"):
        registry._artifact_location()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tracking_uri": " "}, "MLflow tracking URI is empty"),
        ({"tracking_uri": UNREACHABLE, "max_retries": -1}, "max_retries must be 0 or more"),
        ({"tracking_uri": UNREACHABLE, "timeout_seconds": 0}, "timeout_seconds must be positive"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(RegistryError, match=message):
        ModelRegistry(**kwargs)


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_bad_version_numbers(text):
    with pytest.raises(RegistryError, match="a model version is a positive integer"):
        _version_number(text)


def test_version_numbers_accept_v_prefix():
    assert _version_number("v3") == _version_number("3") == _version_number(3) == 3


def test_mask_secrets():
    assert mask_secrets("x https://bob:pw@h:1/p?token=abc&x=1 y") == "x https://bob:***@h:1/p?token=***&x=1 y"
    assert mask_secrets("postgresql://u:p%40ss@db/x") == "postgresql://u:***@db/x"
    assert mask_secrets("http://127.0.0.1:5000/health") == "http://127.0.0.1:5000/health"
    assert RegistryError("a\nb  \n").args == ("a",)
