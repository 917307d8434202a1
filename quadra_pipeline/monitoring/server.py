"""The exporter's HTTP side: `/metrics` (Prometheus's text format), `/health` (the process answers),
`/` (where to look). A threaded WSGI server from the standard library; SIGTERM or Ctrl-C stops it.

The same server also serves the metrics MLflow's own workers write when its server runs with
`--expose-prometheus DIR` (`quadra exporter --multiprocess-dir DIR`): MLflow 3.17 serves them on
`/metrics` of its own port behind its basic-auth app, for the admin alone (`MLFLOW_BASIC_AUTH_FAIL_CLOSED`
is on by default: a read-only user gets HTTP 403), so Prometheus reads them here instead, with no
MLflow credential at all.
"""

from __future__ import annotations

import logging
import signal
import socketserver
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger("quadra.exporter")


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)


def app(registry: CollectorRegistry, what: str) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/health":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"OK\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"quadra exporter: {what}\n/metrics  Prometheus text format\n/health   OK while the process runs\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: /metrics or /health\n"]

    return application


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """The metrics the processes of a `prometheus_client` multiprocess directory wrote (MLflow's
    workers, with `mlflow server --expose-prometheus DIR`), summed as one target."""
    from prometheus_client import multiprocess

    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder (MLflow's --expose-prometheus directory)")
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


def make(host: str, port: int, registry: CollectorRegistry, what: str) -> WSGIServer:
    return make_server(host, port, app(registry, what), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)


def serve(host: str, port: int, registry: CollectorRegistry, what: str, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = make(host, port, registry, what)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        address = f"http://{host}:{server.server_port}/metrics"
        (ready or log.info)(f"quadra exporter: {what} on {address}")
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
