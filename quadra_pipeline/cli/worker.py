"""`quadra worker`: one Celery worker in the foreground, for QUADRA_RUN_EXECUTOR=celery.

Run it on every host that should take steps (in the Compose stack: the `worker` service,
`docker compose up --scale worker=3`). It consumes the `dagster` and `sweeps` queues of the
broker the settings name, one step at a time by default, as `celery worker` does; SIGTERM or
Ctrl-C stops it after the step it is running (a warm shutdown); a worker that is killed instead
never acknowledged its step, so the broker gives it to another worker.
"""

from __future__ import annotations

import argparse
import socket

from ._common import _positive


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("worker", help="run a Celery worker for QUADRA_RUN_EXECUTOR=celery (foreground)",
                                 description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default=None, help="comma-separated queues to consume (default: dagster,sweeps)")
    parser.add_argument("--concurrency", type=_positive, default=1, help="steps run at once (processes; default 1)")
    parser.add_argument("--name", default=None, help="the worker's node name (default: quadra@<host name>)")
    parser.add_argument("--loglevel", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--ping", action="store_true",
                        help="do not run a worker: ask the worker of this name (default: this host's) to answer "
                        "through the broker; exit 0 if it does within 10 s (a health check)")
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from ..defs.runs.celery import QUEUES, worker_app
    from ._common import CommandError

    app = worker_app()
    name = args.name or f"quadra@{socket.gethostname()}"
    if args.ping:
        answers = app.control.ping(destination=[name], timeout=10)
        if not answers:
            raise CommandError(f"worker {name} did not answer through the broker within 10 s")
        print(f"worker {name}: ok")
        return 0
    argv = [
        "worker",
        "--queues", args.queues or ",".join(QUEUES),
        "--concurrency", str(args.concurrency),
        "--pool", "prefork",
        "--hostname", name,
        "--loglevel", args.loglevel,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    app.worker_main(argv)
    return 0
