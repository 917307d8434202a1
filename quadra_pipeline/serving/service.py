"""One `quadra serve`: the alias follower and the HTTP server, in the foreground or in a thread.

    run(settings, host=..., port=..., workers=...)   # the command: until SIGTERM or Ctrl-C, exit 0
    with Serving(config, registry, keyring).in_thread() as url: ...   # tests and benchmarks

The main process makes the run folder, starts the follower thread and then uvicorn: with one
worker the app runs in this process; with N it is N uvicorn worker processes (spawned, each
loading `app.worker_app`), watched and restarted by uvicorn's supervisor, all reading the run
folder. SIGTERM (or Ctrl-C) lets uvicorn finish the requests in flight (at most 10 s), stops
the follower and removes the run folder; the exit code is 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..keys import Keyring
from .cache import RUN_DIR_VARIABLE, RunDir, make_run_dir, remove_run_dir
from .config import ServingConfig, ServingError
from .follower import AliasFollower

log = logging.getLogger("quadra_pipeline.serving")

GRACEFUL_SECONDS = 10


def configure_logging() -> None:
    """Our log lines on stderr (uvicorn configures its own loggers), once per process."""
    if any(getattr(h, "_quadra", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s quadra.serving[%(process)d]: %(message)s"))
    handler._quadra = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def one_thread() -> None:
    """One torch thread per serving process: rows of a request are too few to gain from more, and
    N workers would otherwise fight over the cores."""
    import torch

    torch.set_num_threads(1)


def registry_for(settings: Any, config: ServingConfig) -> Any:
    """The registry as the service reads it: the settings' MLflow (with the reader's credentials,
    if any), the model keyring to verify, no private key, bounded calls (5 s, 1 retry)."""
    from ..keys import model_keyring
    from ..registry import ModelRegistry

    return ModelRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root, model_name=config.model,
                         keys=None, keyring=model_keyring(settings), credentials=settings.mlflow_credentials,
                         max_retries=1, timeout_seconds=5.0)


class Serving:
    def __init__(self, config: ServingConfig, registry: Any, keyring: Keyring) -> None:
        config.check()
        if not len(keyring):
            raise ServingError("no model verification key is configured (QUADRA_MODEL_VERIFY_KEY_FILE, "
                               "QUADRA_MODEL_VERIFY_KEYS_FILE or their variable forms): nothing could be verified")
        self.config = config
        self.registry = registry
        self.keyring = keyring
        self.run_dir: RunDir | None = None
        self.follower: AliasFollower | None = None

    def _make_run_dir(self) -> RunDir:
        self.run_dir = RunDir(make_run_dir(self.config.cache_dir))
        return self.run_dir

    def _start_follower(self, app: Any = None) -> None:
        """The follower thread; with the app of this process (one worker), its holder takes each
        model the follower verified and loaded directly."""
        assert self.run_dir is not None
        holder = app.state.service.holder if app is not None else None
        self.follower = AliasFollower(self.registry, self.keyring, self.run_dir, model=self.config.model,
                                      alias=self.config.alias, poll_seconds=self.config.poll_seconds,
                                      refused_retry_seconds=self.config.refused_retry_seconds,
                                      on_publish=holder.offer if holder is not None else None)
        self.follower.start()

    def _stop_follower(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower.join(timeout=30)
        if self.run_dir is not None:
            remove_run_dir(self.run_dir.path)

    def _uvicorn_config(self, app: Any, **extra: Any) -> Any:
        import uvicorn

        return uvicorn.Config(app, host=self.config.host, port=self.config.port, access_log=self.config.access_log,
                              log_level="info", timeout_graceful_shutdown=GRACEFUL_SECONDS, lifespan="on",
                              server_header=False, **extra)

    def serve_forever(self) -> int:
        """In the foreground (the main thread): until SIGTERM or SIGINT."""
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        from .app import create_app

        received: list[int] = []
        previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
        run_dir = self._make_run_dir()
        log.info("serving %s@%s on http://%s:%s with %d worker%s (alias looked at every %g s; %s)", self.config.model,
                 self.config.alias, self.config.host, self.config.port, self.config.workers,
                 "s" if self.config.workers != 1 else "", self.config.poll_seconds,
                 "bearer token required" if self.config.token else "no token: loopback only")
        try:
            if self.config.workers == 1:
                app = create_app(self.config, run_dir, self.keyring)
                self._start_follower(app)
                server = uvicorn.Server(self._uvicorn_config(app))
                server.run()
                if not server.started and not received:
                    raise ServingError(f"the server did not start on {self.config.host}:{self.config.port} (see above)")
            else:
                os.environ[RUN_DIR_VARIABLE] = str(run_dir.path)  # the spawned workers' way to it
                self._start_follower()
                config = self._uvicorn_config("quadra_pipeline.serving.app:worker_app", factory=True,
                                              workers=self.config.workers)
                try:
                    sock = config.bind_socket()
                except SystemExit:
                    raise ServingError(f"cannot listen on {self.config.host}:{self.config.port} (see above)") from None
                Multiprocess(config, sockets=[sock]).run()
        finally:
            self._stop_follower()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("stopped%s", f" on {signal.Signals(received[0]).name}" if received else "")
        return 0

    @contextlib.contextmanager
    def in_thread(self, *, timeout: float = 60.0) -> Iterator[str]:
        """One worker in a thread of this process, on a port the OS picks; yields its URL."""
        import uvicorn

        from .app import create_app

        run_dir = self._make_run_dir()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server = None
        thread = None
        try:
            app = create_app(self.config, run_dir, self.keyring)
            self._start_follower(app)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port if self.config.port else 0))
            port = sock.getsockname()[1]
            server = uvicorn.Server(self._uvicorn_config(app))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="quadra-serving-http",
                                      daemon=True)
            thread.start()
            deadline = time.monotonic() + timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise ServingError("the in-process server did not start")
                time.sleep(0.02)
            yield f"http://{self.config.host}:{port}"
        finally:
            if server is not None:
                server.should_exit = True
            if thread is not None:
                thread.join(timeout=GRACEFUL_SECONDS + 5)
            sock.close()
            self._stop_follower()


def run(settings: Any, *, host: str | None = None, port: int | None = None, workers: int | None = None,
        access_log: bool = False) -> int:
    """`quadra serve`: the settings' model and alias, served until SIGTERM."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # pyfunc.load_model of a folder draws one
    from ..keys import model_keyring

    configure_logging()
    one_thread()
    config = ServingConfig.from_settings(settings, host=host, port=port, workers=workers, access_log=access_log)
    config.check()
    return Serving(config, registry_for(settings, config), model_keyring(settings)).serve_forever()
