"""`quadra`: the command line for what is not Dagster's job.

    quadra train        train outside Dagster (debugging, benchmarks)
    quadra model probe  the spec's probe losses for any checkpoint
    quadra model list     registered versions, their aliases and the alias history
    quadra model promote  move an alias (champion) to a version; also the rollback
    quadra model import   register a checkpoint (the original's format or ours)
    quadra db upgrade   migrate the project's database to the newest schema
    quadra db current   print the database's schema revision

Every error ends the program with a non-zero exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """An expected failure: its message is the one line the user sees."""


def _known_errors() -> tuple[type[BaseException], ...]:
    from .backup.errors import BackupError
    from .data import DataSourceError
    from .model import CheckpointError
    from .registry import RegistryError
    from .settings import SettingsError
    from .store import StoreError
    from .training import TrainingError

    return (CommandError, BackupError, DataSourceError, CheckpointError, RegistryError, SettingsError, StoreError, TrainingError)


# quadra train --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _field_size(text: str) -> int:
    value = _integer(text)
    if not 2 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 2 and 4096, got {value}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from .settings import load_settings
    from .training import MetricsFile, TrainingConfig, config_from_checkpoint, run_training

    settings = load_settings()
    source_options = _source_options(args)
    explicit = {
        "field_size": args.field_size,
        "batches": args.batches,
        "rows_per_batch": args.rows_per_batch,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.source is not None:
        explicit["source"] = args.source
        explicit["source_options"] = source_options
    if args.resume:
        # Settings not given on the command line come from the checkpoint.
        config = config_from_checkpoint(args.resume, **explicit)
    else:
        config = TrainingConfig(
            field_size=args.field_size or settings.field_size,
            batches=args.batches or settings.batches,
            rows_per_batch=args.rows_per_batch or settings.rows_per_batch,
            seed=settings.seed if args.seed is None else args.seed,
            learning_rate=args.learning_rate or settings.learning_rate,
            source=args.source or "synthetic",
            source_options=source_options,
            checkpoint_every=args.checkpoint_every or 10,
        )
    out = Path(args.out)
    from .training import CHECKPOINT_NAME

    if not args.resume and not args.force and (out / CHECKPOINT_NAME).exists():
        raise CommandError(
            f"{out} already holds a checkpoint; continue it with --resume {out / CHECKPOINT_NAME}, "
            "or start afresh with --force (it replaces the checkpoint and the metrics)"
        )
    metrics_path = out / f"metrics.{args.metrics_format}"
    resumed_batches = _checkpoint_batches(args.resume) if args.resume else 0
    progress = _progress_bar(config.batches, resumed_batches)
    with MetricsFile(metrics_path, keep_through_batch=resumed_batches) as metrics_file:
        try:
            outcome = run_training(config, out, resume=args.resume, on_batch=[metrics_file, progress.update])
        finally:
            progress.close()
    last = outcome.metrics[-1] if outcome.metrics else None
    summary = {
        "checkpoint": str(outcome.checkpoint),
        "checkpoint_sha256": outcome.checkpoint_sha256,
        "metrics": str(metrics_path),
        "batches": outcome.batches_done,
        "rows": outcome.rows_consumed,
        "seconds": round(outcome.seconds, 3),
        "rows_per_second": round(outcome.rows_per_second, 2),
        "final_loss": last.loss if last else None,
        "final_reward": last.reward if last else None,
    }
    if outcome.batches_done < config.batches:
        print(f"quadra: warning: the source ran out after {outcome.batches_done} of {config.batches} batches", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.source_option or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--source-option must look like KEY=VALUE, got {item!r}")
        options[key] = _parse_value(value)
    return options


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _checkpoint_batches(path: str) -> int:
    from .model import load_checkpoint

    loaded = load_checkpoint(path)
    return loaded.trainer.batches_done if loaded.trainer else 0


class _Progress:
    """A tqdm bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, done: int) -> None:
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="batch", file=sys.stderr, dynamic_ncols=True)

    def update(self, metrics: Any, rows: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{metrics.loss:.4f}", reward=f"{metrics.reward:.2f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress_bar(total: int, done: int) -> _Progress:
    return _Progress(total, done)


# quadra model probe --------------------------------------------------------------------------


def cmd_model_probe(args: argparse.Namespace) -> int:
    import torch

    from .model import load_checkpoint, probe

    torch.set_num_threads(1)
    loaded = load_checkpoint(args.checkpoint)
    result = probe(loaded.model)
    if args.json:
        print(json.dumps({"checkpoint": str(loaded.path), "format": loaded.format, "field_size": loaded.field_size, **result.as_dict()}))
    else:
        print(f"checkpoint         {loaded.path} ({loaded.format} format, field size {loaded.field_size})")
        print(f"update_field       {result.update_field:.4f}")
        print(f"adjust_syntropy    {result.adjust_syntropy:.4f}")
        print(f"penalize_variance  {result.penalize_variance:.4f}")
        print(f"spike rate (nn1)   {result.spike_rate:.4f}")
    return EXIT_OK


# quadra model list / promote / import (the MLflow registry and its mirror in the database) ----


def _model_version(text: str) -> int:
    value = text.strip()
    number = value[1:] if value[:1] in ("v", "V") else value
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"must be a version number such as 3 (or v3), got {text!r}")
    return int(number)


def _registry_and_store() -> tuple[Any, Any]:
    """The registry (MLFLOW_TRACKING_URI, or SQLite under QUADRA_HOME) and the migrated store."""
    import logging
    import warnings

    from .registry import ModelRegistry
    from .settings import load_settings
    from .store import ensure_schema, make_engine

    settings = load_settings()
    registry = ModelRegistry.from_settings(settings)
    if registry.is_remote:
        registry.check_available()  # an unreachable server fails before MLflow is even imported

    import mlflow  # noqa: F401 - configures its loggers on import: quieten them after that

    # The command prints what matters; MLflow's INFO chatter (store migrations) and its
    # deprecation warnings would otherwise land on stderr.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")

    if not registry.is_remote:
        registry.check_available()  # opens (and on first use migrates) the tracking store
    engine = make_engine(settings.database_url)
    ensure_schema(engine)
    return registry, engine


def _short_label(label: str | None, model_name: str) -> str:
    if label is None:
        return "none"
    return label.removeprefix(f"{model_name}/")


def cmd_model_list(args: argparse.Namespace) -> int:
    from .registry import list_with_history

    registry, engine = _registry_and_store()
    try:
        listing = list_with_history(registry, engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(listing.as_dict(), indent=2))
        return EXIT_OK
    name = listing.model_name
    print(f"{name} at {listing.tracking_uri}")
    if not listing.versions:
        print(f"no versions of {name} are registered yet ('quadra model import PATH' adds one)")
    else:
        print(f"{'VERSION':>7}  {'ALIASES':<22} {'CREATED (UTC)':<19}  {'SOURCE':<10} {'N':>5}  {'SHA-256':<12}  RUN")
        for v in listing.versions:
            created = v.created_at.strftime("%Y-%m-%d %H:%M:%S")  # UTC
            mirror = "" if listing.mirrored.get(v.version) else "  (not in the database yet)"
            print(f"{v.version:>7}  {','.join(v.aliases) or '-':<22} {created:<19}  {v.tags.get('source', '-'):<10} "
                  f"{v.tags.get('field_size', '?'):>5}  {(v.checkpoint_sha256 or '?')[:12]:<12}  {(v.run_id or '-')[:12]}"
                  f"{mirror}")
    if listing.history:
        print("alias history (oldest first):")
        for move in listing.history:
            when = move.moved_at.strftime("%Y-%m-%d %H:%M:%S")
            line = (f"  {when}  {move.alias:<11} {_short_label(move.from_version, name):>4} -> "
                    f"{_short_label(move.to_version, name):<4}  by {move.moved_by or 'unknown'}")
            print(line + (f"  ({move.reason})" if move.reason else ""))
    for problem in listing.drift:
        print(f"quadra: warning: aliases differ: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_model_promote(args: argparse.Namespace) -> int:
    from .registry import default_actor, promote

    registry, engine = _registry_and_store()
    actor = default_actor()
    try:
        previous = promote(registry, engine, args.version, alias=args.alias, moved_by=actor, reason=args.reason)
    finally:
        engine.dispose()
    name = registry.model_name
    if previous == args.version:
        print(f"{name}@{args.alias} is already version {args.version}; nothing moved")
    elif previous is None:
        print(f"{name}@{args.alias} -> version {args.version} (no version held it before; by {actor})")
    else:
        print(f"{name}@{args.alias}: version {previous} -> version {args.version} (by {actor})")
    return EXIT_OK


def cmd_model_import(args: argparse.Namespace) -> int:
    from .registry import CHALLENGER, default_actor, import_checkpoint

    from .model import load_checkpoint

    path = Path(args.path)
    load_checkpoint(path)  # a file that is no checkpoint is refused before any store is touched
    registry, engine = _registry_and_store()
    try:
        registered = import_checkpoint(registry, engine, path, description=args.description or "",
                                       moved_by=default_actor())
    finally:
        engine.dispose()
    tags = registered.tags
    print(f"imported {path} ({tags.get('checkpoint_format', '?')} format, field size {tags.get('field_size', '?')}) "
          f"as {registered.model_name} version {registered.version}; {CHALLENGER} -> {registered.version}")
    print(f"model uri   {registered.model_uri}")
    print(f"sha256      {registered.checkpoint_sha256}")
    print(f"mlflow run  {registered.run_id}")
    return EXIT_OK


# quadra backup --------------------------------------------------------------------------------


def _backup_service():
    from .backup.service import BackupService
    from .settings import load_settings

    return BackupService(load_settings(), log_fn=lambda line: print(line, file=sys.stderr))


def cmd_backup_create(args: argparse.Namespace) -> int:
    result = _backup_service().create()
    print(result.manifest.backup_id)
    return EXIT_OK


def cmd_backup_list(args: argparse.Namespace) -> int:
    service = _backup_service()
    repository = service.repository
    from .backup import BackupError

    for backup_id in repository.backup_ids():
        try:
            manifest = repository.read_manifest(backup_id)
        except BackupError as exc:
            print(f"{backup_id}  DAMAGED  {exc}")
            continue
        signed = "signed" if manifest.signature else "unsigned"
        print(f"{backup_id}  {manifest.created_at:%Y-%m-%d %H:%M:%S}Z  {len(manifest.files)} files  {manifest.total_bytes} bytes  {signed}")
    return EXIT_OK


def cmd_backup_verify(args: argparse.Namespace) -> int:
    service = _backup_service()
    if args.all and args.ids:
        raise CommandError("give backup ids or --all, not both")
    reports = service.verify(args.ids or None)
    if not reports:
        print(f"no backups in {service.repository.root}")
        return EXIT_OK
    bad = 0
    for report in reports:
        if report.ok:
            print(f"{report.backup_id}  OK  {report.files_checked} files, {report.bytes_checked} bytes re-hashed")
        else:
            bad += 1
            print(f"{report.backup_id}  FAILED  {'; '.join(report.problems)}")
    if bad:
        raise CommandError(f"{bad} of {len(reports)} backups failed verification")
    return EXIT_OK


def cmd_backup_restore(args: argparse.Namespace) -> int:
    if args.in_place == (args.target is not None):
        raise CommandError("restore needs exactly one of --target DIR or --in-place")
    result = _backup_service().restore(args.backup_id, Path(args.target) if args.target else None, in_place=args.in_place)
    where = "the live data home" if args.in_place else str(result.target)
    print(f"restored {result.backup_id} into {where} ({result.files} files, {result.seconds:.2f} s)")
    if result.moved_aside:
        print(f"what was there before is in {result.moved_aside}")
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
    return EXIT_OK


# quadra db -----------------------------------------------------------------------------------


def _database_url(args: argparse.Namespace) -> str:
    from .settings import load_settings

    return args.database_url or load_settings().database_url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .store import current, mask_url, upgrade

    url = _database_url(args)
    upgrade(url, args.revision)
    print(f"{mask_url(url)}: at revision {current(url)}")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace) -> int:
    from .store import current, head_revision

    url = _database_url(args)
    revision = current(url)
    head = head_revision()
    state = "up to date" if revision == head else f"behind head {head}; run 'quadra db upgrade'"
    print(f"{revision or 'empty (no schema)'} ({state})")
    return EXIT_OK


# Parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quadra", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train outside Dagster, writing a checkpoint and metrics into DIR",
                                description="Train the model outside Dagster; write checkpoint.pt and metrics into DIR.")
    train.add_argument("--field-size", type=_field_size, help="field size N (default QUADRA_FIELD_SIZE, 100)")
    train.add_argument("--batches", type=_positive, help="batches to train in total, including any resumed ones")
    train.add_argument("--rows-per-batch", type=_positive, help="rows pulled from the text stream per batch (10)")
    train.add_argument("--seed", type=_non_negative, help="seed for every random draw (QUADRA_SEED, 0)")
    train.add_argument("--learning-rate", type=_learning_rate, help="base learning rate (0.001)")
    train.add_argument("--source", choices=("synthetic", "file", "huggingface"), help="text source (synthetic)")
    train.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                       help="source option, repeatable (e.g. path=corpus.txt, text_field=text)")
    train.add_argument("--checkpoint-every", type=_positive, help="write a checkpoint every K batches (10)")
    train.add_argument("--metrics-format", choices=("jsonl", "csv"), default="jsonl")
    train.add_argument("--out", required=True, metavar="DIR", help="folder for checkpoint.pt and metrics")
    train.add_argument("--resume", metavar="CKPT", help="continue exactly from a checkpoint written by quadra train")
    train.add_argument("--force", action="store_true", help="start afresh even if DIR already holds a checkpoint")
    train.set_defaults(handler=cmd_train)

    model = commands.add_parser("model", help="inspect checkpoints; list, promote and import registered versions").add_subparsers(
        dest="model_command", metavar="COMMAND", required=True, parser_class=_Parser)
    probe = model.add_parser("probe", help="mean loss per action on 200 fixed vectors, and nn1's spike rate",
                             description="Probe a checkpoint (ours or the original's format).")
    probe.add_argument("checkpoint", metavar="CHECKPOINT")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.set_defaults(handler=cmd_model_probe)
    listing = model.add_parser("list", help="registered versions, their aliases and the alias history",
                               description="List the versions of the registered model (MLflow) with their aliases, "
                                           "and every alias move recorded in the database.")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=cmd_model_list)
    promote = model.add_parser("promote", help="move an alias (champion) to VERSION; promoting an older one is the rollback",
                               description="Move an alias to VERSION in MLflow and record who moved it, when, and "
                                           "from which version (an unknown version changes nothing).")
    promote.add_argument("version", type=_model_version, metavar="VERSION", help="registry version number, e.g. 3")
    promote.add_argument("--alias", default="champion", help="alias to move (champion)")
    promote.add_argument("--reason", help="why, recorded in the alias history")
    promote.set_defaults(handler=cmd_model_promote)
    imported = model.add_parser("import", help="register a checkpoint file as a new version (challenger moves to it)",
                                description="Import a checkpoint (the original's format or ours) as a new version of "
                                            "the registered model, in its own MLflow run.")
    imported.add_argument("path", metavar="PATH", help="checkpoint file (.pth / .pt)")
    imported.add_argument("--description", help="version description (default: where it came from)")
    imported.set_defaults(handler=cmd_model_import)

    backup = commands.add_parser("backup", help="backups with checksums: create, list, verify, restore, export, import, prune").add_subparsers(
        dest="backup_command", metavar="COMMAND", required=True, parser_class=_Parser)
    create = backup.add_parser("create", help="back up the databases, MLflow artifacts and checkpoints (prints the id)",
                               description="Take a consistent backup of everything needed to recover.")
    create.set_defaults(handler=cmd_backup_create)
    listing = backup.add_parser("list", help="one line per backup, its id first", description="List complete backups, oldest first.")
    listing.set_defaults(handler=cmd_backup_list)
    verify = backup.add_parser("verify", help="re-hash and check signatures (default: all backups); non-zero on any problem",
                               description="Verify backups: every object's SHA-256, sizes, the manifest's signature and name.")
    verify.add_argument("ids", nargs="*", metavar="ID")
    verify.add_argument("--all", action="store_true", help="every backup (the default)")
    verify.set_defaults(handler=cmd_backup_verify)
    restore = backup.add_parser("restore", help="verify, then restore into a new folder or over the live data home",
                                description="Restore a backup (verified first; a tampered or corrupt backup is refused).")
    restore.add_argument("backup_id", nargs="?", default="latest", metavar="ID|latest")
    restore.add_argument("--target", metavar="DIR", help="a new or empty folder to restore into")
    restore.add_argument("--in-place", action="store_true", help="restore over the live data home, moving what is there aside")
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

    db = commands.add_parser("db", help="the project's SQL database").add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser)
    up = db.add_parser("upgrade", help="apply migrations up to the newest schema (Alembic head)",
                       description="Apply migrations (Alembic) to DATABASE_URL or --database-url.")
    up.add_argument("--revision", default="head", help="target revision (head)")
    up.add_argument("--database-url", help="database URL (default DATABASE_URL or the data home's SQLite file)")
    up.set_defaults(handler=cmd_db_upgrade)
    cur = db.add_parser("current", help="print the database's schema revision",
                        description="Print the schema revision of DATABASE_URL or --database-url.")
    cur.add_argument("--database-url", help="database URL (default DATABASE_URL or the data home's SQLite file)")
    cur.set_defaults(handler=cmd_db_current)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        from .settings import load_settings

        load_settings()  # every command refuses bad settings (e.g. production without a secret key)
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
