"""Operations that touch both the MLflow registry and the project's SQL store.

The store's `model_versions` table mirrors the registry (one row per registry version, labelled
`"<model name>/<version>"`, e.g. "quadra-matrix/3") and `model_alias_events` records every
alias move (who, when, from which version to which), so that "which version was champion last
Tuesday" has an answer (`repository.alias_holder_at`).

Consistency between the two systems, which cannot share a transaction:

- register: the registry comes first (only it knows the new version number; the version is
  signed as it is registered); then, in one DB transaction under the model's alias lock, the
  mirror row and the `challenger` move are recorded and `challenger` is moved in MLflow. If that
  fails, the new version is deleted from the registry again and `challenger` stays (or goes
  back) where it was.
- promote (and rollback, which is the same operation towards an older version): the version is
  looked up in the registry and its files checked against its signature first (unknown,
  unsigned or altered: refused, nothing changed); then, inside one DB transaction under the
  alias lock, the move is recorded, the alias is set in MLflow, and the transaction commits.
  If MLflow refuses, the transaction rolls back; if the commit fails after MLflow moved the
  alias, the alias is moved back. A version the registry has but the mirror lacks (registered
  before the mirror existed, or a new database) is mirrored from its registry tags first.

Every pipeline move happens under the alias lock (`repository.lock_aliases`), and so does the
comparison that records moves made outside the pipeline (`history.reconcile_aliases`): the
comparison never sees a pipeline move half-made.
"""

from __future__ import annotations

import getpass
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import ModelRegistry, RegisteredVersion, VersionInfo
from .errors import RegistryError
from .history import AliasMove, reconcile_aliases
from .names import CHALLENGER, CHAMPION, TAG_SHA256, TAG_SIGNATURE_KEY

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from quadra_pipeline.model import QuadraModel
    from quadra_pipeline.store import ModelVersion

    Bind = Engine | sessionmaker[Session]


def version_label(model_name: str, version: int) -> str:
    """The `model_versions.version` label of a registry version: "quadra-matrix/3"."""
    return f"{model_name}/{int(version)}"


def default_actor(prefix: str = "cli") -> str:
    """Who moves an alias from this process: "cli:<OS user>"."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers), no USER variable
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{prefix}:{user}"


def _actor_for(tags: Mapping[str, Any]) -> str:
    run_id = tags.get("dagster_run_id")
    return f"dagster:{run_id}" if run_id else default_actor()


# Register ----------------------------------------------------------------------------------


def register_and_mirror(
    registry: ModelRegistry,
    bind: Bind,
    *,
    run_id: str,
    model: QuadraModel,
    checkpoint_path: str | os.PathLike[str],
    tags: Mapping[str, Any],
    description: str = "",
    metrics: Mapping[str, float] | None = None,
    training_run: Any = None,
    moved_by: str | None = None,
    signed_as: str = "at registration",
) -> RegisteredVersion:
    """Register in MLflow (challenger moves to the new version), then write the mirror row and
    the challenger move to the store. If the store refuses, the registry is put back.

    `training_run` (the store's run id, external run id or object) links the row and attaches
    that run's metric rows to the version. `moved_by` defaults to "dagster:<dagster_run_id>"
    when the tags carry one, else "cli:<OS user>"."""
    from quadra_pipeline.store import repository, session_scope

    actor = moved_by or _actor_for(tags)
    registered = registry.register(
        run_id, model, checkpoint_path, tags=tags, description=description, metrics=metrics or {},
        signed_as=signed_as, move_challenger=False,
    )
    moved_in_mlflow = False
    try:
        with session_scope(bind) as session:
            repository.lock_aliases(session, registry.model_name)
            row = repository.register_model_version(
                session,
                version=version_label(registry.model_name, registered.version),
                sha256_hash=registered.checkpoint_sha256,
                file_path=registered.model_uri,
                description=description or None,
                metrics=_finite(metrics or {}),
                registered_model_name=registry.model_name,
                registry_version=registered.version,
                mlflow_run_id=run_id,
                training_run=training_run,
            )
            repository.move_alias(
                session, row, CHALLENGER, moved_by=actor, reason=f"registered version {registered.version}"
            )
            registered.previous_challenger = registry.set_alias(CHALLENGER, registered.version)
            moved_in_mlflow = True
    except BaseException as exc:
        label = version_label(registry.model_name, registered.version)
        try:
            registry.discard(registered if moved_in_mlflow else _without_challenger(registered))
        except RegistryError as undo:
            raise RegistryError(
                f"{label} is registered in MLflow but could not be recorded in the database ({exc}), "
                f"and deleting it from MLflow failed: {undo}"
            ) from None
        if isinstance(exc, Exception):
            raise RegistryError(
                f"cannot record {label} in the database ({exc}); it was removed from MLflow again"
            ) from exc
        raise
    return registered


def _without_challenger(registered: RegisteredVersion) -> RegisteredVersion:
    """The version as `discard` must undo it when `challenger` was never moved to it."""
    from dataclasses import replace

    return replace(registered, previous_challenger=None)


# Promote / rollback ------------------------------------------------------------------------


def promote(
    registry: ModelRegistry,
    bind: Bind,
    version: int,
    *,
    alias: str = CHAMPION,
    moved_by: str | None = None,
    reason: str | None = None,
) -> int | None:
    """Move `alias` (champion by default) to `version` in MLflow and record the move in the
    store; returns the version that held the alias before (None if none did).

    Also the rollback: promoting an older version moves champion back to it. An unknown version
    raises `UnknownModelVersionError`, and a version whose files do not match its signature (or
    that is unsigned) `SignatureError`, naming the version and the file; either changes nothing,
    in MLflow or in the database."""
    from quadra_pipeline.store import repository, session_scope

    info = registry.verify_version(version)  # refuses unknown, unsigned or altered versions first
    actor = moved_by or default_actor()
    moved_in_mlflow = False
    previous: int | None = None
    try:
        with session_scope(bind) as session:
            repository.lock_aliases(session, registry.model_name)
            row = _mirror_row(session, registry, info)
            if alias == CHAMPION:
                repository.promote_version(session, row, alias=alias, moved_by=actor, reason=reason)
            else:
                repository.move_alias(session, row, alias, moved_by=actor, reason=reason)
            previous = registry._set_alias(alias, info.version)
            moved_in_mlflow = True
    except BaseException:
        if moved_in_mlflow:  # the commit failed after MLflow moved: move it back
            if previous is None:
                registry.delete_alias(alias)
            else:
                registry.set_alias(alias, previous)
        raise
    return previous


def _mirror_row(session: Session, registry: ModelRegistry, info: VersionInfo) -> ModelVersion:
    """The store's row for a registry version, created from its registry data if missing."""
    from quadra_pipeline.store import repository
    from quadra_pipeline.store.models import ModelVersion
    from sqlalchemy import select

    label = version_label(registry.model_name, info.version)
    row = session.scalars(
        select(ModelVersion).where(
            ModelVersion.registered_model_name == registry.model_name,
            ModelVersion.registry_version == info.version,
        )
    ).first()
    if row is not None:
        return row
    sha = info.checkpoint_sha256
    if not sha:
        raise RegistryError(
            f"{registry.model_name} version {info.version} has no {TAG_SHA256} tag: it was not registered by "
            "quadra-pipeline and cannot be mirrored"
        )
    metrics = _finite({
        key.removeprefix("metric."): float(value)
        for key, value in info.tags.items()
        if key.startswith("metric.") and _is_number(value)
    })
    return repository.register_model_version(
        session,
        version=label,
        sha256_hash=sha,
        file_path=f"models:/{registry.model_name}/{info.version}",
        description=info.description or None,
        metrics=metrics,
        registered_model_name=registry.model_name,
        registry_version=info.version,
        mlflow_run_id=info.run_id,
        timestamp=info.created_at,
    )


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics for the JSON column: NaN/inf become null (PostgreSQL's JSON refuses them)."""
    result: dict[str, float | None] = {}
    for key, value in metrics.items():
        number = float(value)
        result[str(key)] = number if math.isfinite(number) else None
    return result


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


# Import ------------------------------------------------------------------------------------


def import_checkpoint(
    registry: ModelRegistry,
    bind: Bind,
    path: str | os.PathLike[str],
    *,
    description: str = "",
    moved_by: str | None = None,
) -> RegisteredVersion:
    """Import a checkpoint (the original's format, spec section 8, or ours) as a new version.

    The file is read (and refused, `CheckpointError`, before anything is written) first. Then
    it gets its own MLflow run (tagged source=import, ended FINISHED, or FAILED if anything
    fails), the spec's probe losses as metrics, and is registered and mirrored like a trained
    model: same tags (data_fingerprint "unknown", no Dagster run id), challenger moves to it.
    The registered checkpoint is the file's exact bytes."""
    from quadra_pipeline.model import load_checkpoint, probe

    source = Path(path)
    loaded = load_checkpoint(source)
    registry.require_signing_key("import a checkpoint")  # before any run is started for it
    registry.check_available()
    result = probe(loaded.model)
    metrics = {f"probe_{key}": float(value) for key, value in result.as_dict().items()}
    tags = {
        "source": "import",
        "checkpoint_format": loaded.format,
        "data_fingerprint": "unknown",
        "imported_from": source.name,
    }
    with registry.run(f"import {source.name}", tags={**tags, "field_size": loaded.field_size}) as run_id:
        registry.log_params(
            run_id,
            {"field_size": loaded.field_size, "checkpoint_format": loaded.format, "source_path": str(source.resolve())},
        )
        registry.log_metrics(run_id, [{"batch_number": 0, **metrics}])
        return register_and_mirror(
            registry,
            bind,
            run_id=run_id,
            model=loaded.model,
            checkpoint_path=source,
            tags=tags,
            description=description or f"imported from {source.name} ({loaded.format} format)",
            metrics=metrics,
            moved_by=moved_by or default_actor(),
            signed_as="at import (an original checkpoint, signed as it was imported)"
            if loaded.format == "original"
            else "at import",
        )


# Keys --------------------------------------------------------------------------------------


def signed_versions(registry: ModelRegistry) -> Any:
    """The model keyring (a `keys.KeyringReport`): each key with the versions its
    `signature_key` tag names, then the key ids not in the keyring, then the unsigned versions
    (`quadra model keys`). What the tags claim: `verify_version` checks it."""
    from quadra_pipeline.keys import keyring_report

    by_key: dict[str, list[str]] = {}
    for info in registry.list_versions():
        key = (info.tags.get(TAG_SIGNATURE_KEY) or "signed, key not recorded") if info.signed else "unsigned"
        by_key.setdefault(key, []).append(str(info.version))
    return keyring_report(registry.keyring, registry.keys, by_key)


# List --------------------------------------------------------------------------------------


@dataclass
class RegistryListing:
    model_name: str
    tracking_uri: str  # masked
    versions: list[VersionInfo]
    aliases: dict[str, int]  # MLflow's current aliases
    history: list[AliasMove]  # from the store, oldest first
    mirrored: dict[int, bool] = field(default_factory=dict)  # version -> has a store row
    drift: list[str] = field(default_factory=list)  # where MLflow and the store disagree

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "tracking_uri": self.tracking_uri,
            "aliases": dict(self.aliases),
            "versions": [{**v.as_dict(), "mirrored": self.mirrored.get(v.version, False)} for v in self.versions],
            "history": [m.as_dict() for m in self.history],
            "drift": list(self.drift),
        }


def list_with_history(registry: ModelRegistry, bind: Bind) -> RegistryListing:
    """Versions and aliases (from MLflow) with the alias history (from the store), after
    recording the moves made outside the pipeline."""
    from quadra_pipeline.store import repository, session_scope

    reconcile_aliases(registry, bind)
    versions = registry.list_versions()
    aliases = registry.aliases()
    with session_scope(bind) as session:
        rows = repository.list_model_versions(session, registry.model_name)
        events = repository.alias_history(session, registry.model_name)
        history = [AliasMove.of(e) for e in events]
        store_aliases = {
            alias: row.registry_version for row in rows for alias in (row.aliases or [])
        }
        mirrored_numbers = {row.registry_version for row in rows if row.registry_version is not None}
    drift = []
    for alias in sorted(set(aliases) | set(store_aliases)):
        in_mlflow, in_store = aliases.get(alias), store_aliases.get(alias)
        if in_mlflow != in_store:
            drift.append(f"{alias}: MLflow says {_v(in_mlflow)}, the database says {_v(in_store)}")
    return RegistryListing(
        model_name=registry.model_name,
        tracking_uri=registry.display_uri,
        versions=versions,
        aliases=aliases,
        history=history,
        mirrored={v.version: v.version in mirrored_numbers for v in versions},
        drift=drift,
    )


def _v(version: int | None) -> str:
    return "none" if version is None else f"version {version}"


__all__ = [
    "AliasMove",
    "RegistryListing",
    "default_actor",
    "import_checkpoint",
    "list_with_history",
    "promote",
    "register_and_mirror",
    "signed_versions",
    "version_label",
]
