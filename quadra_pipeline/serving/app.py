"""The HTTP face of `quadra serve`: MLflow's scoring protocol on FastAPI, as `mlflow models serve`.

    POST /invocations     the model's answer: {"predictions": [[l_update, l_adjust, l_penalize], ...],
                          "columns": [the three actions], "action": the policy's pick,
                          "action_losses": [its loss per row], "model_version": N}
                          (header X-Quadra-Model-Version: N); bearer token
    GET  /ping            200 once a verified version is loaded, else 503 (MLflow's readiness)
    GET  /health          the same status code, with the state as JSON: ok, degraded (and why),
                          starting, waiting (no version holds the alias yet), unavailable (why)
    GET  /version         the version answering, the alias move that brought it, what verified
                          it; bearer token
    GET  /metrics         Prometheus text; bearer token
    POST /webhooks/mlflow MLflow registry webhooks (HMAC-signed), only with a webhook secret

Request bodies are read up to QUADRA_SERVING_MAX_BODY_BYTES (413 beyond, before parsing) and
parsed and checked by `inputs` (400/413/415 naming the field); no bad request reaches the model.
Errors are MLflow's shape, `{"error_code": ..., "message": ...}`. `/ping` and `/health` need no
token (health checks) and never show it; the rest compare the `Authorization: Bearer` token in
constant time (401 without it or with another, with `WWW-Authenticate: Bearer`).

The model is read from the `ModelHolder` once per request, so a swap never fails a request. The
verification and the alias-following run in other threads: a request pays for none of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..keys import Keyring
from ..registry.names import CHALLENGER
from .cache import RUN_DIR_VARIABLE, RunDir
from .config import ServingConfig
from .holder import ModelHolder
from .inputs import RequestError, content_kind, parse_csv_request, parse_json_request
from .metrics import Metrics, render
from .webhook import WebhookRefused, WebhookVerifier, concerns

log = logging.getLogger("quadra_pipeline.serving")

JSON = "application/json"
WEBHOOK_MAX_BYTES = 64 * 1024
VERSION_HEADER = "X-Quadra-Model-Version"


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error_code": code, "message": message}), status_code=status, media_type=JSON,
                    headers=headers)


def _iso(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be larger than `limit`: from its
    Content-Length before reading, or while streaming a chunked one."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
        if declared > limit:
            raise RequestError(f"the body is {declared} bytes, more than the {limit} a request may send "
                               "(QUADRA_SERVING_MAX_BODY_BYTES)", status=413, code="PAYLOAD_TOO_LARGE")
        return await request.body()
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(f"the body is more than the {limit} bytes a request may send (QUADRA_SERVING_MAX_BODY_BYTES)",
                               status=413, code="PAYLOAD_TOO_LARGE")
        chunks.append(chunk)
    return b"".join(chunks)


class Service:
    """What the routes of one serving process share."""

    def __init__(self, config: ServingConfig, run_dir: RunDir, keyring: Keyring) -> None:
        self.config = config
        self.run_dir = run_dir
        self.metrics = Metrics()
        self._last_write = 0.0
        self.holder = ModelHolder(run_dir, keyring, model=config.model, alias=config.alias, on_tick=self._tick)
        self.verifier = WebhookVerifier(config.webhook_secret) if config.webhook_secret else None
        self._token = config.token
        self._challenge = {"WWW-Authenticate": 'Bearer realm="quadra-serving"'}

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_write >= 1.0:
            self._last_write = now
            self.metrics.write(self.run_dir, self.holder)

    def refused(self, request: Request) -> Response | None:
        """None if the request may pass; a 401 otherwise (no token configured: everyone may,
        which the configuration allows on loopback outside production only)."""
        if self._token is None:
            return None
        header = request.headers.get("authorization")
        if not header:
            return _error(401, "UNAUTHENTICATED", "a bearer token is required (Authorization: Bearer <token>)",
                          self._challenge)
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode("utf-8"), self._token):
            return _error(401, "UNAUTHENTICATED", "the bearer token was refused",
                          {"WWW-Authenticate": 'Bearer realm="quadra-serving", error="invalid_token"'})
        return None

    def health(self) -> tuple[int, dict[str, Any]]:
        status = self.run_dir.read_status() or {}
        current = self.holder.current
        state = status.get("state") or "starting"
        reason = status.get("reason")
        updated = status.get("updated_at")
        stale_after = max(30.0, 10 * self.config.poll_seconds)
        if updated and time.time() - updated > stale_after:
            state = "degraded" if current is not None else "unavailable"
            reason = f"the alias follower has not reported for {time.time() - updated:.0f} s (last: {reason or 'ok'})"
        if self.holder.problem:
            state = "degraded"
            reason = self.holder.problem if not reason else f"{self.holder.problem}; {reason}"
        if current is None and state in ("ok", "degraded"):
            state = "starting" if not self.holder.problem else "unavailable"
        document = {
            "status": state,
            "reason": reason,
            "model": self.config.model,
            "alias": self.config.alias,
            "version": current.version if current is not None else None,
            "alias_version": status.get("alias_version"),
            "last_alias_check": _iso(status.get("last_ok_check_at")),
            "worker": os.getpid(),
        }
        return (200 if current is not None else 503), document

    def version(self) -> dict[str, Any]:
        from mlflow.version import VERSION

        current = self.holder.current
        assert current is not None
        record = current.record
        move = record.get("move") or {}
        return {
            "model": current.model,
            "alias": current.alias,
            "version": current.version,
            "alias_move": {"from_version": move.get("from_version"), "to_version": move.get("to_version"),
                           "seen_at": _iso(move.get("seen_at"))},
            "verified": {**record.get("tags", {}), "verified_at": _iso(record.get("verified_at"))},
            "loaded_at": _iso(current.loaded_at),
            "field_size": current.field_size,
            "action": current.action,
            "worker": os.getpid(),
            "mlflow_version": VERSION,
        }

    def invoke(self, body: bytes, kind: str) -> tuple[bytes, int, int]:
        """Parse, check, predict: (the JSON answer, the version that answered, rows)."""
        model = self.holder.current  # once: this request's model, whatever swaps meanwhile
        if model is None:
            raise _Unavailable()
        parse = parse_json_request if kind == "json" else parse_csv_request
        batch = parse(body, model.field_size, self.config.max_rows)
        predictions = model.predict(batch.vectors)
        answer: dict[str, Any] = {"predictions": _jsonable(predictions), "columns": _columns()}
        if model.action is not None and model.action_index is not None:
            answer["action"] = model.action
            answer["action_losses"] = _jsonable(predictions[:, model.action_index])
        answer["model_version"] = model.version
        return json.dumps(answer, separators=(",", ":")).encode("utf-8"), model.version, len(predictions)


class _Unavailable(Exception):
    pass


def _columns() -> list[str]:
    from quadra_pipeline.model.qlearning import ACTIONS

    return list(ACTIONS)


def _jsonable(values: np.ndarray) -> Any:
    """Floats as JSON numbers; a non-finite one (possible for extreme inputs) as null, never the
    `NaN` MLflow writes, which is not JSON."""
    if np.isfinite(values).all():
        return values.tolist()
    return _finite_or_none(values.tolist())


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value if np.isfinite(value) else None


def create_app(config: ServingConfig, run_dir: RunDir, keyring: Keyring) -> FastAPI:
    service = Service(config, run_dir, keyring)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        service.holder.refresh()  # what is published already, before the first request
        service.holder.start()
        try:
            yield
        finally:
            service.holder.stop()
            with contextlib.suppress(OSError):
                service.metrics.write(run_dir, service.holder)

    app = FastAPI(title="quadra-serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    metrics = service.metrics

    @app.get("/ping")
    async def ping() -> Response:
        code = 200 if service.holder.current is not None else 503
        metrics.request("/ping", code)
        return Response("\n", status_code=code, media_type=JSON)

    @app.get("/health")
    async def health() -> Response:
        code, document = service.health()
        metrics.request("/health", code)
        return Response(json.dumps(document), status_code=code, media_type=JSON)

    @app.get("/version")
    async def version(request: Request) -> Response:
        refused = service.refused(request)
        if refused is not None:
            metrics.request("/version", 401)
            return refused
        if service.holder.current is None:
            _, document = service.health()
            metrics.request("/version", 503)
            return _error(503, "TEMPORARILY_UNAVAILABLE", f"no verified version is loaded yet ({document['status']}: "
                          f"{document['reason'] or 'starting'})")
        metrics.request("/version", 200)
        return Response(json.dumps(service.version()), media_type=JSON)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        refused = service.refused(request)
        if refused is not None:
            metrics.request("/metrics", 401)
            return refused
        metrics.request("/metrics", 200)
        text = render(run_dir, metrics.snapshot(service.holder), run_dir.read_status())
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        refused = service.refused(request)
        if refused is not None:
            metrics.request("/invocations", 401)
            return refused
        try:
            kind = content_kind(request.headers.get("content-type"))
            body = await read_body(request, config.max_body_bytes)
            answer, version, rows = service.invoke(body, kind)
        except RequestError as exc:
            metrics.request("/invocations", exc.status)
            return _error(exc.status, exc.code, exc.message)
        except _Unavailable:
            _, document = service.health()
            metrics.request("/invocations", 503)
            return _error(503, "TEMPORARILY_UNAVAILABLE", f"no verified version is loaded yet ({document['status']}: "
                          f"{document['reason'] or 'starting'})", {"Retry-After": "2"})
        except Exception:  # noqa: BLE001 - a bug of ours, never the client's: logged with its traceback
            log.exception("POST /invocations failed")
            metrics.request("/invocations", 500)
            return _error(500, "INTERNAL_ERROR", "the service failed on this request (its log has the details)")
        metrics.request("/invocations", 200)
        metrics.invocation(time.perf_counter() - started, rows)
        return Response(answer, media_type=JSON, headers={VERSION_HEADER: str(version)})

    if service.verifier is not None:
        verifier = service.verifier

        @app.post("/webhooks/mlflow")
        async def webhook(request: Request) -> Response:
            try:
                body = await read_body(request, WEBHOOK_MAX_BYTES)
                payload, new = verifier.verify(request.headers, body)
            except RequestError as exc:
                metrics.request("/webhooks/mlflow", exc.status)
                return _error(exc.status, exc.code, exc.message)
            except WebhookRefused as exc:
                log.warning("webhook delivery refused: %s", exc.message)
                metrics.request("/webhooks/mlflow", exc.status)
                return _error(exc.status, "UNAUTHENTICATED", exc.message)
            # The served alias, or the challenger the follower verifies ahead of a promotion.
            woke = new and any(concerns(payload, config.model, alias) for alias in {config.alias, CHALLENGER})
            if woke:
                run_dir.wake()
                log.info("webhook: %s.%s for %s@%s: looking at the aliases now", payload.get("entity"),
                         payload.get("action"), config.model, payload.get("data", {}).get("alias"))
            metrics.request("/webhooks/mlflow", 200)
            return Response(json.dumps({"accepted": True, "woke": bool(woke)}), media_type=JSON)

    return app


def worker_app() -> FastAPI:
    """The app of a uvicorn worker process (`quadra serve --workers N`, N > 1): the settings from
    the environment, the run folder the main process made (QUADRA_SERVING_RUN_DIR)."""
    from ..keys import model_keyring
    from ..settings import load_settings
    from .service import configure_logging, one_thread

    configure_logging()
    one_thread()
    settings = load_settings()
    config = ServingConfig.from_settings(settings)
    return create_app(config, RunDir(os.environ[RUN_DIR_VARIABLE]), model_keyring(settings))
