"""`quadra backup offsite push|verify|list|pull` and `quadra backup restore --from URL`: the
off-site copy of the backup repository (quadra_pipeline/backup/offsite.py)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ._common import EXIT_OK, CommandError


def _settings():
    from ..settings import load_settings

    return load_settings()


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def _store(url: str | None):
    from ..backup import offsite

    return offsite.configured_store(_settings(), url)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Object-store errors as the one line every other error is."""

    def run(args: argparse.Namespace) -> int:
        from ..objectstore import ObjectStoreError

        try:
            return handler(args)
        except ObjectStoreError as exc:
            raise CommandError(str(exc)) from None

    return run


def cmd_offsite_push(args: argparse.Namespace) -> int:
    from ..backup import offsite
    from ..backup.service import BackupService

    service = BackupService(_settings(), log_fn=_log)
    result = offsite.push(service.repository, _store(args.to), log=_log)
    print(f"{result.head or '-'}  {result.bytes_written} bytes written  ({result.summary()})")
    return EXIT_OK


def cmd_offsite_verify(args: argparse.Namespace) -> int:
    from ..backup import offsite

    settings = _settings()
    store = _store(args.url)
    started = time.perf_counter()
    reports = offsite.verify(store, read="all" if args.all else "subset", local_root=settings.backup_dir,
                             rotation_runs=settings.backup_verify_runs, **offsite.key_options(settings))
    seconds = time.perf_counter() - started
    bad = 0
    for report in reports:
        if report.backup_id == offsite.HISTORY:
            line = "OK  chain, head and records agree" if report.ok else "FAILED  " + "; ".join(report.problems)
            print(f"{'history':<26}  {line}")
        elif report.ok:
            print(f"{report.backup_id}  OK  {report.files_checked} files, {report.chunks_read} of "
                  f"{report.chunks_checked} chunks fetched and re-hashed ({report.bytes_checked} bytes)")
        else:
            print(f"{report.backup_id}  FAILED  {'; '.join(report.problems)}")
        bad += not report.ok
    print(f"{store.url}: {len(reports) - 1} backups checked in {seconds:.2f} s", file=sys.stderr)
    if bad:
        raise CommandError(f"{bad} of {len(reports)} checks of the off-site copy {store.url} failed")
    return EXIT_OK


def cmd_offsite_list(args: argparse.Namespace) -> int:
    from ..backup import offsite

    for backup_id in offsite.list_backups(_store(args.url)):
        print(backup_id)
    return EXIT_OK


def cmd_offsite_pull(args: argparse.Namespace) -> int:
    from ..backup import offsite
    from ..backup.service import BackupService

    service = BackupService(_settings(), log_fn=_log)
    ids = offsite.pull(_store(args.url), service.repository, log=_log)
    service.sync_catalogue()
    print(f"pulled {len(ids)} backups into {service.repository.root}; every chunk re-read, the history checked")
    return EXIT_OK


def restore_handler(original: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`quadra backup restore ... --from URL --target DIR`: from the off-site copy; otherwise as before."""

    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "from_url", None):
            return original(args)
        if args.in_place or args.target is None:
            raise CommandError("restore --from URL needs --target DIR (to restore in place from the off-site copy, "
                               "rebuild the local repository first: quadra backup offsite pull)")
        from ..backup import offsite

        settings = _settings()
        started = time.perf_counter()
        manifest = offsite.restore(_store(args.from_url), args.backup_id, Path(args.target), log=_log,
                                   **offsite.key_options(settings))
        print(f"restored {manifest.backup_id} from {args.from_url} into {args.target} ({len(manifest.files)} files, "
              f"{time.perf_counter() - started:.2f} s)")
        return EXIT_OK

    return _guarded(run)


def add_commands(backup: argparse._SubParsersAction, restore: argparse.ArgumentParser) -> None:
    from ._common import _Parser

    restore.add_argument("--from", dest="from_url", metavar="URL",
                         help="restore from the off-site copy (s3://bucket/prefix or a folder), e.g. when the local "
                              "repository is gone; with --target")
    restore.set_defaults(handler=restore_handler(restore.get_default("handler")))
    offsite = backup.add_parser(
        "offsite", help="the off-site copy (QUADRA_BACKUP_OFFSITE): push, verify, list, pull",
        description="The off-site copy of the backup repository: the same layout in an S3 bucket or a folder, "
                    "pushed incrementally, verified with the public key alone, pruned by the same signed records.",
    ).add_subparsers(dest="offsite_command", metavar="COMMAND", required=True, parser_class=_Parser)
    push = offsite.add_parser("push", help="copy what the off-site copy lacks (data first, the head last); prune there",
                              description="Push new chunks, file lists, manifests and records, apply the signed "
                                          "deletions, then the head; delete what no backup there references.")
    push.add_argument("--to", metavar="URL", help="the copy (default: QUADRA_BACKUP_OFFSITE)")
    push.set_defaults(handler=_guarded(cmd_offsite_push))
    verify = offsite.add_parser("verify", help="check the copy with the public key alone; non-zero on any problem",
                                description="Verify every backup of the off-site copy (manifests, signatures, "
                                            "sidecars, file lists, every chunk present with its size, a rotating "
                                            "share fetched and re-hashed; --all: every chunk) and its history.")
    verify.add_argument("url", nargs="?", metavar="URL", help="the copy (default: QUADRA_BACKUP_OFFSITE)")
    verify.add_argument("--all", action="store_true", help="fetch and re-hash every chunk")
    verify.set_defaults(handler=_guarded(cmd_offsite_verify))
    listing = offsite.add_parser("list", help="the backups in the copy, oldest first",
                                 description="List the backups of the off-site copy (ids, oldest first).")
    listing.add_argument("url", nargs="?", metavar="URL", help="the copy (default: QUADRA_BACKUP_OFFSITE)")
    listing.set_defaults(handler=_guarded(cmd_offsite_list))
    pull = offsite.add_parser("pull", help="rebuild a lost local repository from the copy (every chunk checked)",
                              description="Fetch every backup of the off-site copy into the (missing or empty) "
                                          "local repository QUADRA_BACKUP_DIR, verified, then list them in the catalogue.")
    pull.add_argument("url", nargs="?", metavar="URL", help="the copy (default: QUADRA_BACKUP_OFFSITE)")
    pull.set_defaults(handler=_guarded(cmd_offsite_pull))
