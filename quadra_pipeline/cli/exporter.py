"""`quadra exporter`: the pipeline's Prometheus metrics on /metrics, in the foreground.

What Dagster OSS and MLflow do not export, computed at each scrape: backups (the newest good one,
bytes added, integrity and restore-drill outcomes, the volume's free space), jobs (last success and
failure, failures in a row, runs queued and running), the newest training run (duration, final
loss and reward, a non-finite loss) and the champion (version, gate score). It reads the Dagster
instance of DAGSTER_HOME, DATABASE_URL (read-only), QUADRA_BACKUP_DIR and MLflow (as a reader),
and writes nothing. A source that cannot be read is `quadra_source_up{source="..."} 0` and a
line in the log, never a failed scrape. `--multiprocess-dir DIR` serves instead the metrics
MLflow's workers write with `mlflow server --expose-prometheus DIR`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ._common import CommandError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.5 <= value <= 120:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 120 seconds, got {value:g}")
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("exporter", help="serve the pipeline's Prometheus metrics (foreground)",
                                 description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; the stack: 0.0.0.0)")
    parser.add_argument("--port", type=_port, default=9464, help="port (default 9464)")
    parser.add_argument("--deadline", type=_seconds, default=8.0,
                        help="seconds a scrape waits for each source before reporting it down (default 8; keep it "
                        "below Prometheus's scrape_timeout)")
    parser.add_argument("--multiprocess-dir", default=None, metavar="DIR",
                        help="serve the metrics of a prometheus_client multiprocess folder instead (MLflow's "
                        "--expose-prometheus DIR), not the pipeline's")
    parser.add_argument("--once", action="store_true", help="print one scrape on stdout and exit (no server)")
    parser.set_defaults(handler=run_exporter)


def run_exporter(args: argparse.Namespace) -> int:
    from prometheus_client import generate_latest

    from ..monitoring import server
    from ..monitoring.exporter import QuadraCollector, registry_for
    from ..settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("quadra").setLevel(logging.INFO)
    if args.multiprocess_dir:
        directory = Path(args.multiprocess_dir)
        if not directory.is_dir():
            raise CommandError(f"--multiprocess-dir {directory}: no such folder (the folder MLflow's server was given "
                               "with --expose-prometheus)")
        registry = server.multiprocess_registry(directory)
        what = f"the metrics of the processes writing {directory}"
    else:
        registry = registry_for(QuadraCollector.from_settings(load_settings(), deadline_seconds=args.deadline))
        what = "the pipeline's metrics"
    if args.once:
        sys.stdout.write(generate_latest(registry).decode("utf-8"))
        return 0
    try:
        server.serve(args.host, args.port, registry, what, ready=lambda line: print(line, file=sys.stderr, flush=True))
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
