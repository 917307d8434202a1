"""`quadra replication run|config|lag`, `quadra restore --to TIME --target DIR` and its drill
`quadra restore [--to TIME] --drill`: Litestream for the embedded SQLite databases
(quadra_pipeline/replication/)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ._common import EXIT_OK, CommandError


def _settings():
    from ..settings import load_settings

    return load_settings()


def _errors(handler):
    def run(args: argparse.Namespace) -> int:
        from ..objectstore import ObjectStoreError
        from ..replication import ReplicationError

        try:
            return handler(args)
        except (ReplicationError, ObjectStoreError) as exc:
            raise CommandError(str(exc)) from None

    return run


def cmd_replication_run(args: argparse.Namespace) -> int:
    """Replace this process with `litestream replicate` (with `--exec CMD`: beside CMD, ending
    with it); without QUADRA_REPLICA, with CMD alone (or nothing)."""
    import shlex

    from ..replication import litestream

    settings = _settings()
    if not settings.replica:
        if not args.exec:
            print("quadra: replication is off (QUADRA_REPLICA is not set)", file=sys.stderr)
            return EXIT_OK
        argv = shlex.split(args.exec)
        os.execvp(argv[0], argv)
    config = litestream.prepare(settings, log=lambda line: print(line, file=sys.stderr))
    argv = litestream.command(config, args.exec)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, litestream.environment())
    return EXIT_OK  # not reached


def cmd_replication_config(args: argparse.Namespace) -> int:
    import json

    from ..replication import litestream

    print(json.dumps(litestream.config(_settings()), indent=1))
    return EXIT_OK


def cmd_replication_lag(args: argparse.Namespace) -> int:
    from ..replication import lag

    settings = _settings()
    lags = lag.measure_lags(settings)
    for item in lags:
        seconds = "-" if math.isinf(item.seconds) else f"{item.seconds:.1f} s"
        print(f"{item.name:<40}  {seconds:>9}  txid {item.local_txid} local, {item.replica_txid} replica  {item.detail}")
    problems = lag.lag_problems(lags, settings.replication_max_lag)
    if problems:
        raise CommandError(f"{len(problems)} of {len(lags)} databases are behind: " + "; ".join(problems))
    return EXIT_OK


def cmd_restore_to(args: argparse.Namespace) -> int:
    from ..replication import pitr

    if args.drill:
        return _restore_drill(args)
    if args.to is None or args.target is None:
        raise CommandError("quadra restore needs --to TIME and --target DIR (or --drill, which restores into a "
                           "temporary folder and checks it)")
    settings = _settings()
    when = pitr.parse_time(args.to)
    result = pitr.restore_to(settings, when, Path(args.target), log=lambda line: print(line, file=sys.stderr))
    print(f"restored to {pitr._stamp(result.when)} into {result.target}: {', '.join(result.databases)}; "
          f"{result.runs} runs' event logs; {result.artifact_files} artifact files from {result.artifacts_from or '-'} "
          f"({result.seconds:.2f} s)")
    for note in result.notes:
        print(f"  note: {note}")
    if result.missing_artifacts:
        raise CommandError(f"restored, but {len(result.missing_artifacts)} artifact folders the restored registry names "
                           f"are in no backup and not in the live folder: {', '.join(result.missing_artifacts)}")
    return EXIT_OK


def _restore_drill(args: argparse.Namespace) -> int:
    """`quadra restore [--to TIME] --drill`: the restore into a temporary folder, checked, removed
    (replication/drill.py); a line per check, then the summary; non-zero naming what failed."""
    import json

    from ..replication import drill, pitr

    if args.target is not None:
        raise CommandError("--drill restores into a temporary folder of its own and removes it: drop --target")
    when = pitr.parse_time(args.to) if args.to is not None else None
    report = drill.drill(_settings(), when, log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise CommandError(report.summary())  # the last line, naming what failed
    if not args.json:
        print(report.summary())
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    from ._common import _Parser

    replication = commands.add_parser(
        "replication", help="Litestream for the SQLite databases (QUADRA_REPLICA): run, config, lag",
        description="Continuous replication of the project, MLflow and Dagster SQLite databases with Litestream.",
    ).add_subparsers(dest="replication_command", metavar="COMMAND", required=True, parser_class=_Parser)
    run = replication.add_parser("run", help="litestream replicate (beside --exec CMD; CMD alone when replication is off)",
                                 description="Put the databases in WAL mode, write the configuration, then become "
                                             "`litestream replicate` (what `make dev` runs).")
    run.add_argument("--exec", metavar="CMD", help="run CMD beside it; Litestream stops when CMD ends")
    run.set_defaults(handler=_errors(cmd_replication_run))
    config = replication.add_parser("config", help="print Litestream's configuration (JSON, which is YAML)",
                                    description="The configuration `quadra replication run` writes.")
    config.set_defaults(handler=_errors(cmd_replication_config))
    lag = replication.add_parser("lag", help="seconds each database's replica is behind; non-zero past QUADRA_REPLICATION_MAX_LAG",
                                 description="The replication lag per database (what the replication check measures).")
    lag.set_defaults(handler=_errors(cmd_replication_lag))
    restore = commands.add_parser(
        "restore", help="point-in-time restore: every SQLite database at --to TIME, and the artifacts they name",
        description="Restore the project, MLflow and Dagster databases to one instant from the Litestream replica "
                    "(QUADRA_REPLICA), and the artifacts the restored registry names from the hourly backups, into a "
                    "new folder (--target), or into a temporary one that is checked and removed (--drill). A time "
                    "outside what the replica keeps is refused, naming the range.")
    restore.add_argument("--to", metavar="TIME", help="the instant, with its zone: 2026-12-07T10:15:30Z "
                         "(with --drill it may be left out: the newest replicated state)")
    restore.add_argument("--target", metavar="DIR", help="a new or empty folder")
    restore.add_argument("--drill", action="store_true",
                         help="a drill: restore into a temporary folder, check every database (integrity, tables) and the "
                              "champion (SHA-256, signature, loads), remove it; non-zero naming what failed")
    restore.add_argument("--json", action="store_true", help="with --drill: the report as JSON")
    restore.set_defaults(handler=_errors(cmd_restore_to))
