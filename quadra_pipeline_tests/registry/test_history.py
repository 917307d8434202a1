"""The whole alias history: moves made with a plain `MlflowClient` (as the MLflow UI and REST API
make them) are found by the comparison and recorded as `external`, with the time they were seen."""

from __future__ import annotations

import datetime as dt

from mlflow import MlflowClient

from quadra_pipeline.registry import CHALLENGER, CHAMPION, EXTERNAL, alias_moves, champion_at, promote, reconcile_aliases
from quadra_pipeline.store import alias_holder_at, production_version, session_scope

from .test_registry import register, store_snapshot

UTC = dt.timezone.utc


def outsider(registry) -> MlflowClient:
    """Another client of the same registry, knowing nothing of quadra-pipeline."""
    return MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


def test_a_champion_moved_outside_the_pipeline_is_recorded(registry, engine, trained):
    model, checkpoint = trained
    first = register(registry, engine, model, checkpoint)
    second = register(registry, engine, model, checkpoint)
    promote(registry, engine, first.version, moved_by="cli:test", reason="first champion")
    assert reconcile_aliases(registry, engine) == []  # the pipeline's own moves are all known

    before = dt.datetime.now(UTC)
    outsider(registry).set_registered_model_alias(registry.model_name, CHAMPION, str(second.version))
    [move] = reconcile_aliases(registry, engine)
    after = dt.datetime.now(UTC)
    label = f"{registry.model_name}/"
    assert (move.alias, move.from_version, move.to_version, move.moved_by) == (
        CHAMPION, f"{label}{first.version}", f"{label}{second.version}", EXTERNAL)
    assert before <= move.moved_at <= after  # the time it was seen
    assert "outside the pipeline" in move.reason and "after the previous check at" in move.reason
    assert reconcile_aliases(registry, engine) == []  # recorded once

    with session_scope(engine) as session:  # the mirror follows: champion is production
        assert production_version(session, registry.model_name).version == f"{label}{second.version}"
        assert alias_holder_at(session, registry.model_name, CHAMPION, before) == f"{label}{first.version}"
        assert alias_holder_at(session, registry.model_name, CHAMPION, after) == f"{label}{second.version}"
    assert champion_at(registry, engine, after) == f"{label}{second.version}"


def test_a_deleted_alias_and_a_move_the_history_never_saw(registry, engine, trained):
    model, checkpoint = trained
    first = register(registry, engine, model, checkpoint)
    client = outsider(registry)
    client.set_registered_model_alias(registry.model_name, "staging", str(first.version))
    client.delete_registered_model_alias(registry.model_name, CHALLENGER)
    moves = alias_moves(registry, engine)  # compares first, then lists
    external = [(m.alias, m.from_version, m.to_version) for m in moves if m.moved_by == EXTERNAL]
    label = f"{registry.model_name}/{first.version}"
    assert external == [(CHALLENGER, label, None), ("staging", None, label)]
    assert [m.alias for m in alias_moves(registry, engine, "staging")] == ["staging"]
    versions, _ = store_snapshot(engine, registry.model_name)
    assert versions == [(label, False, ["staging"])]


def test_a_move_to_a_version_registered_outside_the_pipeline(registry, engine, trained):
    """Versions the mirror does not know are recorded by label; nothing is lost or refused."""
    model, checkpoint = trained
    ours = register(registry, engine, model, checkpoint)
    client = outsider(registry)
    source = client.get_model_version_download_uri(registry.model_name, str(ours.version))
    foreign = client.create_model_version(registry.model_name, source=source)
    client.set_registered_model_alias(registry.model_name, CHAMPION, foreign.version)
    [move] = reconcile_aliases(registry, engine)
    assert move.to_version == f"{registry.model_name}/{foreign.version}" and move.moved_by == EXTERNAL
