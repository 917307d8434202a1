"""Model versions (the MLflow registry's mirror) and the history of every alias move.

Functions take a `Session`, flush but never commit. A version is its label
("quadra-matrix/3"), its id (int) or the object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._checks import _add_guarded, _as_int, _aware, _first_line, _label, _sha256
from .errors import DuplicateError, InvalidDataError, StoreError, UnknownVersionError
from .models import DEFAULT_MODEL_NAME, AliasCheck, ModelAliasEvent, ModelVersion, TrainingMetric
from .runs import RunRef, get_training_run

VersionRef = str | int | ModelVersion

#: The alias that marks the production version (MLflow's convention; stages are deprecated).
PRODUCTION_ALIAS = "champion"



def metrics_for_version(session: Session, version: VersionRef) -> list[TrainingMetric]:
    """The metrics attached to a model version, by run then batch number."""
    version_id = get_model_version(session, version).id
    query = (
        select(TrainingMetric)
        .where(TrainingMetric.model_version_id == version_id)
        .order_by(TrainingMetric.training_run_id, TrainingMetric.batch_number)
    )
    return list(session.scalars(query))


def attach_metrics_to_version(session: Session, run: RunRef, version: VersionRef) -> int:
    """Point every metric row of `run` at `version`; return how many rows were updated."""
    run_id = get_training_run(session, run).id
    version_id = get_model_version(session, version).id
    result = session.execute(
        update(TrainingMetric)
        .where(TrainingMetric.training_run_id == run_id)
        .values(model_version_id=version_id)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount or 0)


# Model versions ---------------------------------------------------------------------------


def register_model_version(
    session: Session,
    *,
    version: str,
    sha256_hash: str,
    file_path: str | None = None,
    description: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    registered_model_name: str = DEFAULT_MODEL_NAME,
    registry_version: int | None = None,
    mlflow_run_id: str | None = None,
    training_run: RunRef | None = None,
    timestamp: dt.datetime | None = None,
    attach_metrics: bool = True,
) -> ModelVersion:
    """Record a saved model version (not production). With `training_run`, the run's metric
    rows are attached to it unless `attach_metrics=False`."""
    _label(version, "version", 100)
    _label(registered_model_name, "registered_model_name", 255)
    run_id = None if training_run is None else get_training_run(session, training_run).id
    row = ModelVersion(
        version=version,
        timestamp=_aware(timestamp, "timestamp"),
        sha256_hash=_sha256(sha256_hash, "sha256_hash"),
        file_path=file_path,
        description=description,
        is_production=False,
        metrics=dict(metrics or {}),
        registered_model_name=registered_model_name,
        registry_version=(
            None if registry_version is None else _as_int(registry_version, "registry_version")
        ),
        mlflow_run_id=mlflow_run_id,
        training_run_id=run_id,
        aliases=[],
    )

    def conflict(exc: IntegrityError) -> StoreError:
        if session.scalars(select(ModelVersion.id).where(ModelVersion.version == version)).first():
            return DuplicateError(f"model version {version!r} is already registered")
        if registry_version is not None:
            return DuplicateError(
                f"registry version {registered_model_name} v{registry_version} is already recorded"
            )
        return StoreError(f"cannot register model version {version!r}: {_first_line(exc)}")

    _add_guarded(session, row, conflict)
    if run_id is not None and attach_metrics:
        attach_metrics_to_version(session, run_id, row)
    return row


def find_model_version(session: Session, version: VersionRef) -> ModelVersion | None:
    """The version by label, id or object, or None."""
    if isinstance(version, ModelVersion):
        return None if version.id is None else session.get(ModelVersion, version.id)
    if isinstance(version, str):
        return session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if isinstance(version, int) and not isinstance(version, bool):
        return session.get(ModelVersion, version)
    raise InvalidDataError(f"a model version is a label, an id or a ModelVersion, not {version!r}")


def get_model_version(session: Session, version: VersionRef) -> ModelVersion:
    """The version by label, id or object; `UnknownVersionError` if there is none."""
    found = find_model_version(session, version)
    if found is None:
        shown = version.version if isinstance(version, ModelVersion) else version
        raise UnknownVersionError(f"model version {shown!r} is not registered")
    return found


def list_model_versions(session: Session, model_name: str | None = None) -> list[ModelVersion]:
    """Versions (of one registered model, or all), oldest first."""
    query = select(ModelVersion).order_by(ModelVersion.timestamp, ModelVersion.id)
    if model_name is not None:
        query = query.where(_model_name_is(model_name))
    return list(session.scalars(query))


def production_version(session: Session, model_name: str | None = None) -> ModelVersion | None:
    """The version marked production (of one registered model, or any), or None."""
    query = select(ModelVersion).where(ModelVersion.is_production.is_(True))
    if model_name is not None:
        query = query.where(_model_name_is(model_name))
    return session.scalars(query.order_by(ModelVersion.id)).first()


def _model_name_is(model_name: str):
    return func.coalesce(ModelVersion.registered_model_name, DEFAULT_MODEL_NAME) == model_name


def _siblings(session: Session, target: ModelVersion) -> list[ModelVersion]:
    """All versions of the target's registered model, row-locked (PostgreSQL) for the update."""
    query = (
        select(ModelVersion)
        .where(_model_name_is(target.model_name))
        .order_by(ModelVersion.id)
        .with_for_update()
    )
    return list(session.scalars(query))


def _move_alias(
    session: Session,
    target: ModelVersion,
    siblings: Sequence[ModelVersion],
    alias: str,
    *,
    moved_by: str | None,
    reason: str | None,
    when: dt.datetime,
) -> ModelAliasEvent | None:
    holders = [v for v in siblings if alias in (v.aliases or []) and v.id != target.id]
    if alias in (target.aliases or []) and not holders:
        return None  # already there: not a move
    for holder in holders:
        holder.aliases = [a for a in holder.aliases if a != alias]
    if alias not in (target.aliases or []):
        target.aliases = [*(target.aliases or []), alias]
    event = ModelAliasEvent(
        model_name=target.model_name,
        alias=alias,
        from_version=holders[0].version if holders else None,
        to_version=target.version,
        moved_at=when,
        moved_by=moved_by,
        reason=reason,
    )
    session.add(event)
    return event


def move_alias(
    session: Session,
    version: VersionRef,
    alias: str,
    *,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelVersion:
    """Give `alias` to `version` (taking it from the version of the same model that held it)
    and record the move. Does not change `is_production`. Unknown version: nothing changes."""
    _label(alias, "alias", 100)
    moved_at = _aware(when, "when")
    target = get_model_version(session, version)
    siblings = _siblings(session, target)
    _move_alias(session, target, siblings, alias, moved_by=moved_by, reason=reason, when=moved_at)
    session.flush()
    return target


def promote_version(
    session: Session,
    version: VersionRef,
    *,
    alias: str = PRODUCTION_ALIAS,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelVersion:
    """Make `version` the production version of its registered model, demote the others, and
    move the production `alias` to it (recorded in `model_alias_events`).

    An unknown version raises `UnknownVersionError` and changes nothing (the original app
    demoted every version first, leaving no production model at all).
    """
    _label(alias, "alias", 100)
    moved_at = _aware(when, "when")
    target = get_model_version(session, version)  # before any write
    siblings = _siblings(session, target)
    for sibling in siblings:
        sibling.is_production = sibling.id == target.id
    _move_alias(session, target, siblings, alias, moved_by=moved_by, reason=reason, when=moved_at)
    session.flush()
    return target


def remove_alias(
    session: Session,
    model_name: str,
    alias: str,
    *,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelAliasEvent | None:
    """Take `alias` away from whichever version of `model_name` holds it (recorded with
    `to_version=None`); None if no version held it. Does not change `is_production`."""
    moved_at = _aware(when, "when")
    query = (
        select(ModelVersion)
        .where(_model_name_is(model_name))
        .order_by(ModelVersion.id)
        .with_for_update()
    )
    holders = [v for v in session.scalars(query) if alias in (v.aliases or [])]
    if not holders:
        return None
    for holder in holders:
        holder.aliases = [a for a in holder.aliases if a != alias]
    event = ModelAliasEvent(
        model_name=model_name,
        alias=alias,
        from_version=holders[0].version,
        to_version=None,
        moved_at=moved_at,
        moved_by=moved_by,
        reason=reason,
    )
    session.add(event)
    session.flush()
    return event


def alias_holder_at(session: Session, model_name: str, alias: str, when: dt.datetime) -> str | None:
    """The version label that held `model_name@alias` at `when` (None if none did).

    Answers "which version was champion last Tuesday" from `model_alias_events`: the latest
    move at or before `when` wins.
    """
    at = _aware(when, "when")
    query = (
        select(ModelAliasEvent.to_version)
        .where(
            ModelAliasEvent.model_name == model_name,
            ModelAliasEvent.alias == alias,
            ModelAliasEvent.moved_at <= at,
        )
        .order_by(ModelAliasEvent.moved_at.desc(), ModelAliasEvent.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def alias_history(
    session: Session, model_name: str, alias: str | None = None
) -> list[ModelAliasEvent]:
    """Every alias move of a registered model (optionally one alias), oldest first."""
    query = select(ModelAliasEvent).where(ModelAliasEvent.model_name == model_name)
    if alias is not None:
        query = query.where(ModelAliasEvent.alias == alias)
    return list(session.scalars(query.order_by(ModelAliasEvent.moved_at, ModelAliasEvent.id)))


# Keeping the history complete -------------------------------------------------------------


def lock_aliases(session: Session, model_name: str) -> AliasCheck:
    """Take the model's alias lock for the rest of the transaction and return its check row.

    Every alias move the pipeline makes and every comparison with the registry runs under this
    lock (a row lock on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serialises writers), so a
    comparison never sees a pipeline move half-made and calls it external."""
    _label(model_name, "model_name", 255)
    row = session.scalars(select(AliasCheck).where(AliasCheck.model_name == model_name).with_for_update()).first()
    if row is None:
        try:
            with session.begin_nested():
                session.add(AliasCheck(model_name=model_name, checked_at=dt.datetime.fromtimestamp(0, dt.timezone.utc)))
        except IntegrityError:
            pass  # made by a concurrent transaction: lock that one
        row = session.scalars(select(AliasCheck).where(AliasCheck.model_name == model_name).with_for_update()).one()
    return row


def alias_holders(session: Session, model_name: str) -> dict[str, str | None]:
    """The holder of each alias as the history last recorded it (`to_version` of its newest
    event; None once removed)."""
    holders: dict[str, str | None] = {}
    for event in alias_history(session, model_name):
        holders[event.alias] = event.to_version
    return holders


def record_alias_move(
    session: Session,
    model_name: str,
    alias: str,
    to_version: str | None,
    *,
    moved_by: str,
    reason: str | None,
    when: dt.datetime | None = None,
) -> ModelAliasEvent:
    """Record a move the registry made without us (`to_version` None: the alias was deleted),
    keeping the mirror's `aliases` (and, for the production alias, `is_production`) in step
    where the versions are mirrored. A version the mirror lacks is recorded by label only."""
    _label(alias, "alias", 100)
    moved_at = _aware(when, "when")
    rows = list(session.scalars(select(ModelVersion).where(_model_name_is(model_name)).order_by(ModelVersion.id)))
    for row in rows:
        if alias in (row.aliases or []) and row.version != to_version:
            row.aliases = [a for a in row.aliases if a != alias]
        if row.version == to_version and alias not in (row.aliases or []):
            row.aliases = [*(row.aliases or []), alias]
        if alias == PRODUCTION_ALIAS:
            row.is_production = row.version == to_version
    event = ModelAliasEvent(
        model_name=model_name,
        alias=alias,
        from_version=alias_holders(session, model_name).get(alias),
        to_version=to_version,
        moved_at=moved_at,
        moved_by=_label(moved_by, "moved_by", 255),
        reason=reason,
    )
    session.add(event)
    session.flush()
    return event
