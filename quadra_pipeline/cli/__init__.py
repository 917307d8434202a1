"""`quadra`: the command line for what is not Dagster's job.

    quadra train          train outside Dagster (debugging, benchmarks)
    quadra model ...      probe a checkpoint; list, history, promote, import, verify, sign registered versions; keys
    quadra backup ...     create, list, verify, restore, export, import, prune backups; keys
    quadra db ...         migrate the project's database, print its schema revision
    quadra wal ...        PostgreSQL's continuous archive: status, base backups, point-in-time recovery
    quadra worker         run a Celery worker (QUADRA_RUN_EXECUTOR=celery), in the foreground

Every error ends the program with a non-zero exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import backup, db, model, train, wal, worker
from ._common import EXIT_ERROR, _known_errors, _Parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quadra", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in (train, model, backup, db, wal, worker):
        module.add_commands(commands)
    __import__(f"{__package__}.serve", fromlist=["add_commands"]).add_commands(commands)  # quadra serve (serving/)
    __import__(f"{__package__}.exporter", fromlist=["add_commands"]).add_commands(commands)  # quadra exporter (monitoring/)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        from ..settings import load_settings

        # Every command refuses bad settings (a secret file that cannot be read, production with a
        # short secret key); a secret that is merely absent is refused by the command that needs it.
        load_settings()
        return handler(args)
    except KeyboardInterrupt:
        print("quadra: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback, unless asked for
        if os.environ.get("QUADRA_DEBUG"):
            raise
        if isinstance(exc, _known_errors()):
            print(f"quadra: error: {exc}", file=sys.stderr)
        else:
            print(f"quadra: unexpected error: {type(exc).__name__}: {exc} (QUADRA_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
