"""`quadra serve`: the champion online, with MLflow's scoring protocol, in the foreground.

It serves the version that the alias (QUADRA_SERVING_ALIAS, `champion`) of the registered model
(QUADRA_SERVING_MODEL, `quadra-matrix`) names, in the registry the settings name
(MLFLOW_TRACKING_URI: the embedded store after `make run`, or a server with
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE), only once it verified; it follows
the alias within seconds. POST /invocations as `mlflow models serve` (with
`Authorization: Bearer <QUADRA_SERVING_TOKEN>` when a token is set, which production requires),
GET /ping, /health, /version, /metrics. SIGTERM or Ctrl-C stops it after the requests in flight.

    quadra serve                         # 127.0.0.1:8080 (QUADRA_SERVING_HOST, QUADRA_SERVING_PORT)
    quadra serve --host 0.0.0.0 --port 8080 --workers 2
    quadra serve --probe                 # a health check: exit 0 if a verified version answers
    quadra serve --probe --or-waiting    # ... or no version holds the alias yet (a new stack)
"""

from __future__ import annotations

import argparse

from ._common import CommandError, _positive


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {value}")
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve the champion over HTTP (MLflow's scoring protocol; foreground)",
                                 description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=None, help="address to listen on (default: QUADRA_SERVING_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=None, help="port (default: QUADRA_SERVING_PORT, 8080)")
    parser.add_argument("--workers", type=_positive, default=None,
                        help="uvicorn worker processes (default: QUADRA_SERVING_WORKERS, 1)")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    parser.add_argument("--probe", action="store_true",
                        help="do not serve: ask the running service's /health (on --host/--port, loopback for "
                             "0.0.0.0) and exit 0 if a verified version answers")
    parser.add_argument("--or-waiting", action="store_true",
                        help="with --probe: exit 0 also while no version holds the alias yet")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..serving import ServingError
    from ..settings import load_settings

    settings = load_settings()
    if args.probe:
        return probe(args.host or settings.serving_host, args.port or settings.serving_port, args.or_waiting)
    if args.or_waiting:
        raise CommandError("--or-waiting goes with --probe")
    from ..serving.service import run

    try:
        return run(settings, host=args.host, port=args.port, workers=args.workers, access_log=args.access_log)
    except ServingError as exc:
        raise CommandError(str(exc)) from None


def probe(host: str, port: int, or_waiting: bool) -> int:
    """GET /health of the service on this host; 0 if it serves (or, with `or_waiting`, waits for
    the first version of its alias), else 1 and one line with its state and reason. A health
    check runs this every few seconds: it prints its error line itself (the CLI's form) rather
    than through the CLI's error handling, which imports torch to name the error (1.8 s, not
    0.16 s)."""
    import json
    import urllib.error
    import urllib.request

    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return _probe_failed(f"no answer from {url} ({getattr(exc, 'reason', exc)})")
    try:
        document = json.loads(body)
    except ValueError:
        document = {}
    state, reason = document.get("status", "?"), document.get("reason")
    if code == 200 or (or_waiting and state == "waiting"):
        version = document.get("version")
        print(f"{state}: " + (f"version {version}" if version is not None else "no version yet") + (f" ({reason})" if reason else ""))
        return 0
    return _probe_failed(f"{url} answered HTTP {code}: {state}" + (f" ({reason})" if reason else ""))


def _probe_failed(message: str) -> int:
    import sys

    from ._common import EXIT_ERROR

    print(f"quadra: error: {message}", file=sys.stderr)
    return EXIT_ERROR
