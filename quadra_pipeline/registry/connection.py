"""The connection to MLflow: the client, a fast availability check, one-line errors.

Every client call goes through `_call`, which bounds MLflow's HTTP retries, hands MLflow the
credentials of an authenticated server for the call, and turns any failure into a
`RegistryError` naming what was being done (an unreachable server or store becomes
`RegistryUnavailableError`, refused credentials say which variables to check); URIs in
messages have their passwords masked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import RegistryError, RegistryUnavailableError, mask_secrets, one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_HTTP_LOCK = threading.RLock()


@contextlib.contextmanager
def mlflow_http_bounds(
    max_retries: int, timeout_seconds: float, credentials: tuple[str, str] | None = None
) -> Iterator[None]:
    """MLflow's HTTP retries and timeout bounded, and its credentials set, for the calls in the block.

    The one place this package touches process-wide state, and why: MLflow reads its retry
    and timeout settings (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `..._TIMEOUT`, `..._BACKOFF_*`)
    and a server's basic-auth credentials (`MLFLOW_TRACKING_USERNAME`, `..._PASSWORD`) from the
    environment on every request and offers no per-client setting (`MlflowClient` and
    `MlflowHostCreds` take none; its defaults retry for minutes). So the variables are set
    around each call, under a lock, and put back exactly as they were: the password (which may
    come from MLFLOW_TRACKING_PASSWORD_FILE, so the process never had it in its environment)
    is in the environment only while a call runs. Everything else is per client: the tracking
    and registry URIs (`MlflowClient(tracking_uri=...)`), artifact repositories
    (`get_artifact_repository(..., tracking_uri=...)`).
    """
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_seconds))),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    if credentials is not None:
        values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"] = credentials
    with _HTTP_LOCK:
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _is_http(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("http", "https")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other URIs and in-memory ones)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        return None
    path = rest[3:].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path("/" + path.lstrip("/")) if rest.startswith("////") else Path(path)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_UNREACHABLE_HINTS = (
    "Connection refused",
    "Failed to establish a new connection",
    "Max retries exceeded",
    "Connection aborted",
    "Connection reset",
    "Read timed out",
    "timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "RemoteDisconnected",
    "unable to open database file",
)


# MLflow's RestException text for a refused request ("... failed with error code 401 != 200").
_AUTH_REFUSED = re.compile(r"error code (401|403)\b")


def _reason(text: str) -> str:
    """A short cause from a requests/urllib3/MLflow error text ("Connection refused", ...)."""
    match = _ERRNO.search(text)
    if match:
        return match.group(1).strip()
    for hint in ("Read timed out", "timed out", "RemoteDisconnected", "Connection aborted",
                 "Connection reset", "unable to open database file"):
        if hint in text:
            return hint
    return one_line(text, limit=160)


def _looks_unreachable(text: str) -> bool:
    return any(hint in text for hint in _UNREACHABLE_HINTS)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")



class MlflowConnection:
    """The tracking store or server at `tracking_uri`, and how this package talks to it."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        max_retries: int = 2,
        timeout_seconds: float = 5.0,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """`credentials`: (username, password) of an MLflow server with basic authentication,
        handed to MLflow for each call only (None: whatever the environment holds, if anything)."""
        if not isinstance(tracking_uri, str) or not tracking_uri.strip():
            raise RegistryError("MLflow tracking URI is empty (set MLFLOW_TRACKING_URI or leave it unset)")
        if max_retries < 0:
            raise RegistryError(f"max_retries must be 0 or more, got {max_retries}")
        if not timeout_seconds > 0:
            raise RegistryError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.tracking_uri = tracking_uri.strip()
        self.max_retries = int(max_retries)
        self.timeout_seconds = float(timeout_seconds)
        self._credentials = tuple(credentials) if credentials is not None else None
        self._client: MlflowClient | None = None
        self._available = False

    @property
    def display_uri(self) -> str:
        """The tracking URI with any password masked (for messages and logs)."""
        return mask_secrets(self.tracking_uri)

    @property
    def is_remote(self) -> bool:
        return _is_http(self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def artifact_repository(self, artifact_uri: str) -> Any:
        """The artifact repository behind `artifact_uri`, talking to this tracking server."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _bounds(self) -> contextlib.AbstractContextManager[None]:
        return mlflow_http_bounds(self.max_retries, self.timeout_seconds, self._credentials)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _call(self, action: str) -> Iterator[None]:
        """Run MLflow calls with bounded HTTP retries; any failure becomes a `RegistryError`."""
        with self._bounds():
            try:
                yield
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - MlflowException, requests, OSError, SQLAlchemy
                raise self._translate(exc, action) from None

    def _quietly(self, action: Any) -> bool:
        """Run a clean-up call after another error; a failure is logged, never raised."""
        try:
            with self._bounds():
                action()
            return True
        except Exception as exc:  # noqa: BLE001 - clean-up after another error
            log.warning("MLflow clean-up step failed: %s", one_line(str(exc)))
            return False

    def _translate(self, exc: BaseException, action: str) -> RegistryError:
        text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        refused = _AUTH_REFUSED.search(text)
        if refused and self.is_remote:
            code = refused.group(1)
            if self._credentials is None:
                why = "no credentials were given (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE)"
            elif code == "401":
                why = (f"the password of user {self._credentials[0]!r} was refused (check MLFLOW_TRACKING_PASSWORD_FILE "
                       "or MLFLOW_TRACKING_PASSWORD)")
            else:
                why = f"user {self._credentials[0]!r} lacks the permission (MLflow's basic-auth permissions)"
            return RegistryError(f"MLflow tracking server at {self.display_uri} answered HTTP {code} while {action}: {why}")
        if _looks_unreachable(text):
            what = "server" if self.is_remote else "store"
            return RegistryUnavailableError(
                f"MLflow tracking {what} at {self.display_uri} is unreachable while {action} ({_reason(text)})"
            )
        return RegistryError(f"MLflow could not {action}: {one_line(text, limit=300)}")

    def check_available(self) -> None:
        """Fail fast with `RegistryUnavailableError` if the tracking server/store is unusable.

        HTTP(S): `GET /health`, `max_retries + 1` attempts of at most `timeout_seconds` each with
        a short backoff. Database URIs (sqlite, postgresql, ...): open the store (the first touch
        of a new store creates and migrates its tables)."""
        if self.is_remote:
            self._check_http()
        else:
            self._check_store()
        self._available = True

    def _check_http(self) -> None:
        import requests

        url = self.tracking_uri.rstrip("/") + "/health"
        attempts = self.max_retries + 1
        last = "no answer"
        for attempt in range(attempts):
            try:
                response = requests.get(url, timeout=self.timeout_seconds)
            except requests.Timeout:
                last = f"no answer within {self.timeout_seconds:g} s"
            except requests.RequestException as exc:
                last = _reason(str(exc))
            else:
                if response.status_code == 200:
                    return
                last = f"/health answered HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    raise RegistryUnavailableError(
                        f"MLflow tracking server at {self.display_uri} is not usable ({last}; "
                        "is this the address of an MLflow tracking server?)"
                    )
            if attempt + 1 < attempts:
                time.sleep(min(0.25 * 2**attempt, 2.0))
        raise RegistryUnavailableError(
            f"MLflow tracking server at {self.display_uri} is unreachable after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} ({last})"
        )

    def _check_store(self) -> None:
        path = _sqlite_path(self.tracking_uri)
        if path is None and "://" in self.tracking_uri and not self.tracking_uri.startswith("file:"):
            # A database server: MLflow itself retries opening it for ~100 s (hard-coded).
            self._check_database_server()
        if path is not None:
            try:
                path.expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryUnavailableError(
                    f"MLflow tracking store {self.display_uri}: cannot create its folder ({exc.strerror or exc})"
                ) from None
        try:
            with self._bounds():
                self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001
            text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
            raise RegistryUnavailableError(
                f"MLflow tracking store {self.display_uri} cannot be opened ({one_line(text, limit=200)})"
            ) from None

    def _check_database_server(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        try:
            url = make_url(self.tracking_uri)
            connect_args: dict[str, Any] = {}
            if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
                connect_args["connect_timeout"] = max(1, math.ceil(self.timeout_seconds))
            engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: let MLflow judge it
            return
        attempts = self.max_retries + 1
        last = "no answer"
        try:
            for attempt in range(attempts):
                try:
                    with engine.connect() as connection:
                        connection.execute(text("SELECT 1"))
                    return
                except Exception as exc:  # noqa: BLE001
                    last = _reason(str(getattr(exc, "orig", None) or exc))
                if attempt + 1 < attempts:
                    time.sleep(min(0.25 * 2**attempt, 2.0))
        finally:
            engine.dispose()
        raise RegistryUnavailableError(
            f"MLflow tracking store {self.display_uri} is unreachable after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} ({last})"
        )

    def _ensure_available(self) -> None:
        if not self._available:
            self.check_available()
