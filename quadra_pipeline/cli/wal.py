"""`quadra wal ...`: PostgreSQL's continuous archive (base backups and the streamed WAL).

    quadra wal status [--json]                  what can be recovered (QUADRA_WAL_ARCHIVE)
    quadra wal status --to TIME|latest          whether TIME can be (exit 1 naming the kept range if not)
    quadra wal base-backup                      a base backup now (QUADRA_WAL_URL: a role with REPLICATION)
    quadra wal prepare-recovery --pgdata DIR [--to TIME] [--copy-wal]
                                                an empty data directory made ready to recover
                                                (to TIME, or as far as the archive goes; with
                                                the WAL it needs inside, for a server that cannot
                                                read the archive)
    quadra wal drill [--to TIME] [--json]       that recovery, tried: on a throwaway server in a
                                                temporary folder, every database and the champion
                                                checked, then all of it removed (backup/wal_drill.py)

The Compose stack runs `status --to` and `prepare-recovery --copy-wal` in `make deploy-restore`
(docs/DISASTER_RECOVERY.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from ..backup.wal import RECOVERY_WAL
from ._common import CommandError


def _when(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601, e.g. 2026-12-07T10:15:30Z)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: give one (e.g. a trailing Z for UTC)")
    return moment


def _when_or_latest(text: str) -> dt.datetime | str:
    return "latest" if text == "latest" else _when(text)


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("wal", help="PostgreSQL's continuous archive: status, base backups, recovery",
                                 description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="wal_command", metavar="COMMAND", required=True, parser_class=type(parser))
    status = sub.add_parser("status", help="what the archive can recover")
    status.add_argument("--json", action="store_true")
    status.add_argument("--to", type=_when_or_latest, default=None,
                        help="only check that this moment (or `latest`: the newest state) can be recovered: exit 1 "
                             "naming the kept range if not")
    status.set_defaults(handler=cmd_status)
    base = sub.add_parser("base-backup", help="take a base backup into the archive, then apply retention")
    base.set_defaults(handler=cmd_base_backup)
    prepare = sub.add_parser("prepare-recovery", help="make an empty data directory ready to recover from the archive")
    prepare.add_argument("--pgdata", type=Path, required=True, help="the empty data directory (the new volume)")
    prepare.add_argument("--to", type=_when, default=None, help="recover to this moment (default: as far as the WAL goes)")
    prepare.add_argument("--archive-mount", default="/wal-archive",
                         help="where the PostgreSQL server will see the archive (default /wal-archive)")
    prepare.add_argument("--copy-wal", action="store_true",
                         help=f"for a server that cannot read the archive: copy the WAL the recovery needs into "
                              f"DIR/{RECOVERY_WAL} (delete it once the server is up)")
    prepare.set_defaults(handler=cmd_prepare)
    drill = sub.add_parser("drill", help="a point-in-time recovery on a throwaway server, checked, then removed",
                           description="Recover the archive to TIME (default: as far as the WAL goes) on a throwaway "
                                       "PostgreSQL server in a temporary folder; check every database answers and has its "
                                       "tables and the champion (SHA-256, signature, loads); stop the server and remove "
                                       "the folder. Needs the PostgreSQL server binaries. Non-zero naming what failed.")
    drill.add_argument("--to", type=_when, default=None, help="recover to this moment (default: as far as the WAL goes)")
    drill.add_argument("--json", action="store_true", help="the report as JSON")
    drill.set_defaults(handler=cmd_drill)


def _archive() -> Path:
    from ..settings import load_settings

    archive = load_settings().wal_archive
    if archive is None:
        raise CommandError("QUADRA_WAL_ARCHIVE is not set: the folder of PostgreSQL's continuous archive")
    if not archive.is_dir():
        raise CommandError(f"QUADRA_WAL_ARCHIVE={archive} is not a folder")
    return archive


def cmd_status(args: argparse.Namespace) -> int:
    from ..backup.wal import WalArchiveError, base_backups, check_target, kept_range, newest_wal_time

    archive = _archive()
    kept, backups = kept_range(archive), base_backups(archive)
    if args.to == "latest":
        if kept.continuous_from is None:
            raise CommandError(f"{archive}: nothing can be recovered as far as the WAL goes: the archive keeps "
                               f"{kept.describe()}")
        print(f"the newest state ({kept.continuous_to.isoformat()}) can be recovered (the archive keeps {kept.describe()})")
        return 0
    if args.to is not None:
        try:
            target = check_target(kept, args.to)
        except WalArchiveError as exc:
            raise CommandError(str(exc)) from None
        print(f"{target.isoformat()} can be recovered (the archive keeps {kept.describe()})")
        return 0
    newest = newest_wal_time(archive)
    if args.json:
        print(json.dumps({"archive": str(archive), "recoverable": kept.describe(),
                          "continuous_from": kept.continuous_from.isoformat() if kept.continuous_from else None,
                          "continuous_to": kept.continuous_to.isoformat() if kept.continuous_to else None,
                          "base_backups": [b.as_dict() for b in backups],
                          "newest_wal": newest.isoformat() if newest else None}, indent=2))
        return 0
    print(f"archive {archive}: can recover {kept.describe()}")
    for backup in backups:
        print(f"  base backup {backup.name}: ended {backup.ended.isoformat(timespec='seconds')}, {backup.bytes} bytes")
    return 0


def cmd_base_backup(args: argparse.Namespace) -> int:
    from ..backup.wal import prune, take_base_backup
    from ..settings import load_settings

    settings = load_settings()
    if not settings.wal_url:
        raise CommandError("QUADRA_WAL_URL (or QUADRA_WAL_URL_FILE) is not set: a role with REPLICATION")
    backup = take_base_backup(settings.wal_url, _archive(), timeout=settings.backup_dump_timeout)
    removed = prune(_archive())
    print(f"base backup {backup.name}: {backup.bytes} bytes; pruned {len(removed['base_backups'])} base backup(s), "
          f"{len(removed['segments'])} segment(s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..backup.wal import WalArchiveError, prepare_recovery

    try:
        chosen = prepare_recovery(_archive(), args.pgdata, target=args.to, archive_mount=args.archive_mount,
                                  copy_wal=args.copy_wal)
    except WalArchiveError as exc:
        raise CommandError(str(exc)) from None
    target = args.to.isoformat() if args.to else "as far as the archived WAL goes"
    print(f"{args.pgdata}: base backup {chosen.name} unpacked; PostgreSQL recovers to {target} when it starts")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    import signal
    import sys

    from ..backup.wal_drill import wal_drill
    from ..settings import load_settings

    _archive()
    # Stopped with SIGTERM: unwind, so the drill stops its server and removes its folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = wal_drill(load_settings(), args.to, log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    if not report.ok:
        raise CommandError(report.summary())  # the last line, naming what failed
    if not args.json:
        print(report.summary())
    return 0
