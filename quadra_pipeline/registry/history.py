"""The whole alias history: moves made outside the pipeline are found and recorded.

MLflow keeps no history of its aliases (mlflow#2169), and a champion moved in the MLflow UI,
through its REST API or by another client never passes through this package. So the registry's
aliases are compared, under the model's alias lock, with the holders the history last recorded;
every difference is recorded as a move by `external` (an alias deleted: a move to no version),
at the time the comparison saw it. The move happened between the previous comparison and this
one: `alias_checks` keeps when that was, and the event's reason says both times. The Dagster
sensor `alias_history_sensor` compares about once a minute; `quadra model history` and
`quadra model list` compare first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .client import ModelRegistry
from .names import CHAMPION

if TYPE_CHECKING:
    from .service import Bind

EXTERNAL = "external"


@dataclass
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str | None
    moved_at: dt.datetime
    moved_by: str | None
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "moved_at": self.moved_at.isoformat(),
            "moved_by": self.moved_by,
            "reason": self.reason,
        }

    @classmethod
    def of(cls, event: Any) -> AliasMove:
        return cls(event.alias, event.from_version, event.to_version, event.moved_at, event.moved_by, event.reason)


def reconcile_aliases(registry: ModelRegistry, bind: Bind, *, now: dt.datetime | None = None) -> list[AliasMove]:
    """Record every alias move the registry shows and the history lacks; returns them."""
    from quadra_pipeline.store import repository, session_scope
    from quadra_pipeline.store.models import utcnow

    from .service import version_label

    seen_at = now or utcnow()
    found: list[AliasMove] = []
    with session_scope(bind) as session:
        check = repository.lock_aliases(session, registry.model_name)
        current = {alias: version_label(registry.model_name, v) for alias, v in registry.aliases().items()}
        recorded = repository.alias_holders(session, registry.model_name)
        since = _when(check.checked_at)
        for alias in sorted(set(current) | {a for a, holder in recorded.items() if holder is not None}):
            holder = current.get(alias)
            if holder == recorded.get(alias):
                continue
            what = f"moved to {holder}" if holder else "deleted"
            reason = (
                f"{what} outside the pipeline (MLflow UI, REST API or another client); seen at "
                f"{seen_at.isoformat(timespec='seconds')}, after the previous check at {since}"
            )
            event = repository.record_alias_move(
                session, registry.model_name, alias, holder, moved_by=EXTERNAL, reason=reason, when=seen_at
            )
            found.append(AliasMove.of(event))
        check.checked_at = seen_at
    return found


def alias_moves(registry: ModelRegistry, bind: Bind, alias: str | None = None) -> list[AliasMove]:
    """The alias history (one alias, or all), oldest first, after recording external moves."""
    from quadra_pipeline.store import repository, session_scope

    reconcile_aliases(registry, bind)
    with session_scope(bind) as session:
        return [AliasMove.of(e) for e in repository.alias_history(session, registry.model_name, alias)]


def champion_at(registry: ModelRegistry, bind: Bind, when: dt.datetime) -> str | None:
    """Which version was champion at `when` (after recording external moves)."""
    from quadra_pipeline.store import repository, session_scope

    reconcile_aliases(registry, bind)
    with session_scope(bind) as session:
        return repository.alias_holder_at(session, registry.model_name, CHAMPION, when)


def _when(moment: dt.datetime) -> str:
    if moment.timestamp() <= 0:
        return "never (first check)"
    return moment.isoformat(timespec="seconds")


__all__ = ["EXTERNAL", "AliasMove", "alias_moves", "champion_at", "reconcile_aliases"]
