"""`quadra backup ...`: create, list, verify, restore, export, import and prune backups."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import EXIT_OK, CommandError, _Parser, print_keyring, write_key_pair


def _backup_service():
    from ..backup.service import BackupService
    from ..settings import load_settings

    return BackupService(load_settings(), log_fn=lambda line: print(line, file=sys.stderr))


def cmd_backup_create(args: argparse.Namespace) -> int:
    result = _backup_service().create()
    print(result.manifest.backup_id)
    return EXIT_OK


def cmd_backup_list(args: argparse.Namespace) -> int:
    service = _backup_service()
    repository = service.repository
    from ..backup import BackupError

    for backup_id in repository.backup_ids():
        try:
            manifest = repository.read_manifest(backup_id)
        except BackupError as exc:
            print(f"{backup_id}  DAMAGED  {exc}")
            continue
        signed = "signed" if manifest.signature else "unsigned"
        print(f"{backup_id}  {manifest.created_at:%Y-%m-%d %H:%M:%S}Z  {len(manifest.files)} files  {manifest.total_bytes} bytes  "
              f"{signed}  format {manifest.format_version}")
    return EXIT_OK


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from ..backup.service import HISTORY

    service = _backup_service()
    deep = "sample" if args.sample else "all"
    reports = service.verify(args.ids or None, deep=deep)
    if len(reports) == 1 and reports[0].ok:
        print(f"no backups in {service.repository.root}")
        return EXIT_OK
    bad = 0
    for report in reports:
        if report.backup_id == HISTORY:
            print(_reads(service, deep))
            line = "OK  chain, head and records agree; the catalogue agrees" if report.ok else "FAILED  " + "; ".join(report.problems)
            print(f"{'history':<26}  {line}")
        elif report.ok:
            read = f"{report.chunks_read} of {report.chunks_checked} chunks re-read" if report.format_version == 3 else (
                "every object re-hashed" if deep == "all" else "every object present with its size")
            print(f"{report.backup_id}  OK  {report.files_checked} files, {read}")
        else:
            print(f"{report.backup_id}  FAILED  {'; '.join(report.problems)}")
        bad += not report.ok
    if bad:
        raise CommandError(f"{bad} of {len(reports)} checks failed (the backups and their history)")
    return EXIT_OK


def _reads(service, deep: str) -> str:
    chunks, size = service.last_verify_reads
    if deep == "all":
        return (f"{'read':<26}  {chunks} distinct chunks re-read and re-hashed ({size} bytes), each once: every stored "
                "chunk the backups name")
    return (f"{'read':<26}  {chunks} distinct chunks re-read ({size} bytes); sampled: this hour's share of the rotation "
            f"(1 of {service.settings.backup_verify_runs}); every chunk's presence and size checked (without --sample: "
            "every chunk re-read)")


def cmd_backup_keygen(args: argparse.Namespace) -> int:
    return write_key_pair("ed25519", args.out, force=args.force, setting="QUADRA_BACKUP", verifies="verifies, and cannot sign")


def cmd_backup_keys(args: argparse.Namespace) -> int:
    def describe(labels: list[str]) -> str:
        backups = [x for x in labels if not (x == "head.json" or x.startswith("history/"))]
        history = [x for x in labels if x not in backups]
        parts = [f"{len(backups)} backup{'s' if len(backups) != 1 else ''} ({', '.join(backups)})"] if backups else []
        if history:
            parts.append(f"{len(history)} history document{'s' if len(history) != 1 else ''} ({', '.join(history)})")
        return "; ".join(parts) or "nothing"

    return print_keyring(_backup_service().keys(), as_json=args.json, describe=describe,
                         add_back="QUADRA_BACKUP_VERIFY_KEYS_FILE")


def cmd_backup_restore(args: argparse.Namespace) -> int:
    if args.in_place == (args.target is not None):
        raise CommandError("restore needs exactly one of --target DIR or --in-place")
    result = _backup_service().restore(args.backup_id, Path(args.target) if args.target else None, in_place=args.in_place,
                                       stop_writers=args.stop_writers)
    where = "the live data home" if args.in_place else str(result.target)
    print(f"restored {result.backup_id} into {where} ({result.files} files, {result.seconds:.2f} s)")
    if result.moved_aside:
        print(f"what was there before is in {result.moved_aside}")
    for session in result.stopped:
        print(f"stopped {session}")
    return EXIT_OK


def cmd_backup_export(args: argparse.Namespace) -> int:
    service = _backup_service()
    archive = service.repository.export(service.resolve(args.backup_id), Path(args.out))
    print(f"{archive}  (check: cd {archive.parent} && sha256sum -c {archive.name}.sha256)")
    return EXIT_OK


def cmd_backup_import(args: argparse.Namespace) -> int:
    manifest = _backup_service().repository.import_archive(Path(args.archive))
    print(manifest.backup_id)
    return EXIT_OK


def cmd_backup_prune(args: argparse.Namespace) -> int:
    result = _backup_service().prune(dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for backup_id in result.plan.delete:
        print(f"{verb} {backup_id}")
    print(f"{verb} {len(result.plan.delete)} backups, {result.removed_objects} unreferenced objects "
          f"({result.freed_bytes} bytes); kept {len(result.plan.keep)}")
    if result.gc_skipped:
        print(f"quadra: warning: unreferenced data was not collected: {result.gc_skipped}", file=sys.stderr)
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    backup = commands.add_parser("backup", help="backups with checksums: create, list, verify, restore, export, import, prune; keys").add_subparsers(
        dest="backup_command", metavar="COMMAND", required=True, parser_class=_Parser)
    create = backup.add_parser("create", help="back up the databases, MLflow artifacts and checkpoints (prints the id)",
                               description="Take a consistent backup of everything needed to recover.")
    create.set_defaults(handler=cmd_backup_create)
    listing = backup.add_parser("list", help="one line per backup, its id first", description="List complete backups, oldest first.")
    listing.set_defaults(handler=cmd_backup_list)
    verify = backup.add_parser("verify", help="are my backups good? every backup, every chunk re-read, the history; non-zero on any problem",
                               description="Verify backups (default: all): manifests, signatures, sidecars, file lists, every "
                                           "chunk re-read and re-hashed (each once, however many backups hold it), and the "
                                           "history (rollback, deleted or replayed backups, the catalogue's cross-check). "
                                           "--sample re-reads only this hour's share of the rotation.")
    verify.add_argument("ids", nargs="*", metavar="ID", help="backups to check (default: all)")
    reading = verify.add_mutually_exclusive_group()
    reading.add_argument("--sample", action="store_true",
                         help="re-read only this hour's share of the chunks (1/QUADRA_BACKUP_VERIFY_RUNS); every chunk's "
                              "presence and size is still checked")
    reading.add_argument("--all", action="store_true", help="re-read every chunk (the default; kept for scripts)")
    verify.set_defaults(handler=cmd_backup_verify)
    restore = backup.add_parser("restore", help="verify, then restore into a new folder or over the live data home",
                                description="Restore a backup (verified first; a tampered or corrupt backup is refused).")
    restore.add_argument("backup_id", nargs="?", default="latest", metavar="ID|latest")
    restore.add_argument("--target", metavar="DIR", help="a new or empty folder to restore into")
    restore.add_argument("--in-place", action="store_true", help="restore over the live data home, moving what is there aside")
    restore.add_argument("--stop-writers", action="store_true",
                         help="in place on PostgreSQL: terminate the other sessions of the databases first (else refused, naming them)")
    restore.set_defaults(handler=cmd_backup_restore)
    export = backup.add_parser("export", help="one portable archive (+ .sha256 sidecar) for an off-site copy",
                               description="Export a backup as a single archive with a sha256sum sidecar.")
    export.add_argument("backup_id", metavar="ID|latest")
    export.add_argument("--out", required=True, metavar="FILE")
    export.set_defaults(handler=cmd_backup_export)
    imported = backup.add_parser("import", help="bring an exported archive back (verified before it is added)",
                                 description="Import an archive made by quadra backup export.")
    imported.add_argument("archive", metavar="FILE")
    imported.set_defaults(handler=cmd_backup_import)
    prune = backup.add_parser("prune", help="apply the retention policy (hourly 7 d, daily 30 d, weekly 26 w, monthly 24 m)",
                              description="Delete backups outside the retention policy and objects nothing references.")
    prune.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    prune.set_defaults(handler=cmd_backup_prune)
    keys = backup.add_parser("keys", help="the backup keyring: each key, where it came from, and what it signed",
                             description="List the keys that verify backups (the signing key's own and the retired "
                                         "ones of QUADRA_BACKUP_VERIFY_KEYS_FILE): key id, fingerprint, algorithm, "
                                         "origin, and the backups and history documents each signed; then the key ids "
                                         "that signed something but are not in the keyring. What the manifests claim: "
                                         "quadra backup verify checks it.")
    keys.add_argument("--json", action="store_true", help="print one JSON object")
    keys.set_defaults(handler=cmd_backup_keys)
    keygen = backup.add_parser("keygen", help="make a backup-signing key pair (Ed25519, PEM)",
                               description="Write a new private key (mode 600) and its public key (.pub); the public key "
                                           "alone verifies backups and cannot sign them.")
    keygen.add_argument("--out", default="backup-signing.pem", metavar="FILE", help="private key file (backup-signing.pem)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(handler=cmd_backup_keygen)

    # The off-site copy (offsite push|verify|list|pull, restore --from) and the SQLite replication
    # (quadra replication ..., quadra restore --to TIME): their own modules.
    from . import backup_offsite, replication

    backup_offsite.add_commands(backup, restore)
    replication.add_commands(commands)
