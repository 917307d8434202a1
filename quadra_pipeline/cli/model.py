"""`quadra model ...`: checkpoints (probe) and the MLflow registry with its mirror in the database
(list, history, promote, import, verify, sign, keys, keygen)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, _model_version, _Parser, print_keyring, write_key_pair


def cmd_model_probe(args: argparse.Namespace) -> int:
    import torch

    from ..model import load_checkpoint, probe

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


def _registry_and_store(signs: str | None = None) -> tuple[Any, Any]:
    """The registry (MLFLOW_TRACKING_URI, or SQLite under QUADRA_HOME) and the migrated store.
    `signs` ("import a checkpoint"): the command signs, so a missing signing key is refused
    first, before any store is touched."""
    import logging
    import warnings

    from ..registry import ModelRegistry
    from ..settings import load_settings
    from ..store import ensure_schema, make_engine

    settings = load_settings()
    registry = ModelRegistry.from_settings(settings)
    if signs:
        registry.require_signing_key(signs)
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
    from ..registry import list_with_history

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
        print("alias history (oldest first; 'external': moved outside the pipeline, time as seen):")
        _print_history(listing.history, name)
    for problem in listing.drift:
        print(f"quadra: warning: aliases differ: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_model_history(args: argparse.Namespace) -> int:
    from ..registry import alias_moves

    registry, engine = _registry_and_store()
    try:
        moves = alias_moves(registry, engine, args.alias)  # records external moves first
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"model_name": registry.model_name, "alias": args.alias, "history": [m.as_dict() for m in moves]}, indent=2))
        return EXIT_OK
    if not moves:
        print(f"no alias moves of {registry.model_name}{'@' + args.alias if args.alias else ''} recorded yet")
    _print_history(moves, registry.model_name)
    return EXIT_OK


def _print_history(moves: list[Any], name: str) -> None:
    for move in moves:
        when = move.moved_at.strftime("%Y-%m-%d %H:%M:%S")
        line = (f"  {when}  {move.alias:<11} {_short_label(move.from_version, name):>4} -> "
                f"{_short_label(move.to_version, name):<4}  by {move.moved_by or 'unknown'}")
        print(line + (f"  ({move.reason})" if move.reason else ""))


def cmd_model_verify(args: argparse.Namespace) -> int:
    registry, _engine = _registry_and_store()
    _engine.dispose()
    info = registry.verify_version(args.version)  # SignatureError: one line, non-zero exit
    print(f"{registry.model_name} version {info.version}: every file matches its signature "
          f"(signed {info.tags.get('signed', '?')}, key {info.tags.get('signature_key', '?')[:12]})")
    return EXIT_OK


def cmd_model_sign(args: argparse.Namespace) -> int:
    from ..registry import default_actor

    registry, _engine = _registry_and_store(signs="sign a version")
    _engine.dispose()
    actor = default_actor()
    info = registry.sign_version(args.version, signed_as=f"after registration, by quadra model sign ({actor})")
    print(f"signed {registry.model_name} version {info.version} (its checkpoint matched its tagged SHA-256); "
          f"tags say: signed {info.tags.get('signed')}")
    return EXIT_OK


def cmd_model_keys(args: argparse.Namespace) -> int:
    from ..registry import signed_versions

    registry, engine = _registry_and_store()
    engine.dispose()

    def describe(labels: list[str]) -> str:
        return f"{len(labels)} version{'s' if len(labels) != 1 else ''} ({', '.join(labels)})"

    return print_keyring(signed_versions(registry), as_json=args.json, describe=describe,
                         add_back="QUADRA_MODEL_VERIFY_KEYS_FILE")


def cmd_model_keygen(args: argparse.Namespace) -> int:
    return write_key_pair("ec-p256", args.out, force=args.force, setting="QUADRA_MODEL", verifies="verifies")


def cmd_model_promote(args: argparse.Namespace) -> int:
    from ..registry import default_actor, promote

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
    from ..model import load_checkpoint
    from ..registry import CHALLENGER, default_actor, import_checkpoint

    path = Path(args.path)
    load_checkpoint(path)  # a file that is no checkpoint is refused before any store is touched
    registry, engine = _registry_and_store(signs="import a checkpoint")
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


def add_commands(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="inspect checkpoints; list, promote, import, verify and sign registered versions").add_subparsers(
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
    history = model.add_parser("history", help="every alias move, including those made outside the pipeline",
                               description="Record the alias moves made outside the pipeline (MLflow UI, REST API, other "
                                           "clients: actor 'external'), then print the whole alias history.")
    history.add_argument("--alias", help="only this alias (e.g. champion)")
    history.add_argument("--json", action="store_true", help="print one JSON object")
    history.set_defaults(handler=cmd_model_history)
    verify = model.add_parser("verify", help="check VERSION's files against its signature (exit 0 if they match)",
                              description="Download VERSION's model files and check them against its signature with the "
                                          "public key; non-zero exit and one line naming the file when they differ.")
    verify.add_argument("version", type=_model_version, metavar="VERSION")
    verify.set_defaults(handler=cmd_model_verify)
    sign = model.add_parser("sign", help="sign a VERSION registered before signing existed",
                            description="Sign an unsigned version's files as they are (its checkpoint must match its tagged "
                                        "SHA-256); its tags say it was signed after registration.")
    sign.add_argument("version", type=_model_version, metavar="VERSION")
    sign.set_defaults(handler=cmd_model_sign)
    keys = model.add_parser("keys", help="the model keyring: each key, where it came from, and the versions it signed",
                            description="List the keys that verify model versions (the signing key's own and the "
                                        "retired ones of QUADRA_MODEL_VERIFY_KEYS_FILE): key id, fingerprint, "
                                        "algorithm, origin, and the versions each signed (their signature_key tag); "
                                        "then the key ids that signed versions but are not in the keyring.")
    keys.add_argument("--json", action="store_true", help="print one JSON object")
    keys.set_defaults(handler=cmd_model_keys)
    keygen = model.add_parser("keygen", help="make a model-signing key pair (ECDSA P-256, PEM)",
                              description="Write a new private key (mode 600) and its public key (.pub) for signing "
                                          "model versions.")
    keygen.add_argument("--out", default="model-signing.pem", metavar="FILE", help="private key file (model-signing.pem)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(handler=cmd_model_keygen)

