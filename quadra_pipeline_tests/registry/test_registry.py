"""The registry against a real MLflow store: SQLite here, a real `mlflow server` in
test_server.py (which imports these tests and swaps the `tracking` fixture)."""

from __future__ import annotations

import datetime as dt

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from quadra_pipeline.model import CheckpointError, file_sha256, load_checkpoint
from quadra_pipeline.model.serving import QuadraPolicyModule
from quadra_pipeline.registry import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    UnknownModelVersionError,
    import_checkpoint,
    list_with_history,
    promote,
    register_and_mirror,
    version_label,
)
from quadra_pipeline.store import (
    ModelAliasEvent,
    ModelVersion,
    alias_history,
    alias_holder_at,
    production_version,
    register_model_version,
    session_scope,
)
from quadra_pipeline_tests.model.test_checkpoint import write_original
from quadra_pipeline_tests.registry.conftest import mlflow_fluent_api

from .conftest import FIELD_SIZE, make_model, write_checkpoint

TAGS = {"dagster_run_id": "dagster-run-1", "data_fingerprint": "fp-123", "source": "synthetic"}


def register(registry, engine, model, checkpoint, *, tags=TAGS, metrics=None, description=""):
    """register_and_mirror inside a run that always ends, as the Dagster asset does it."""
    with registry.run("train", tags={"source": tags.get("source", "test")}) as run_id:
        return register_and_mirror(
            registry, engine, run_id=run_id, model=model, checkpoint_path=checkpoint,
            tags=tags, description=description, metrics=metrics or {"gate_score": 0.25},
        )


def store_snapshot(engine, model_name):
    with session_scope(engine) as session:
        rows = session.scalars(
            select(ModelVersion).where(ModelVersion.registered_model_name == model_name).order_by(ModelVersion.id)
        ).all()
        events = alias_history(session, model_name)
        return (
            [(r.version, r.is_production, sorted(r.aliases or [])) for r in rows],
            [(e.alias, e.from_version, e.to_version, e.moved_by) for e in events],
        )


# Registering --------------------------------------------------------------------------------


def test_register_creates_a_version_with_all_tags(registry, engine, trained):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)

    assert registered.version == 1
    assert registered.model_uri == f"models:/{registry.model_name}/1"
    assert registered.checkpoint_sha256 == file_sha256(checkpoint)
    tags = registry.version_tags(1)
    assert tags["checkpoint_sha256"] == file_sha256(checkpoint)
    assert tags["dagster_run_id"] == "dagster-run-1"
    assert tags["data_fingerprint"] == "fp-123"
    assert tags["source"] == "synthetic"
    assert tags["field_size"] == str(FIELD_SIZE)
    assert tags["code_version"].startswith("0.")
    assert float(tags["metric.gate_score"]) == 0.25
    assert registry.alias_version(CHALLENGER) == 1
    assert registry.alias_version(CHAMPION) is None
    assert registry.run_status(registered.run_id) == "FINISHED"

    [info] = registry.list_versions()
    assert (info.version, info.aliases, info.run_id) == (1, [CHALLENGER], registered.run_id)
    assert info.created_at.tzinfo is not None

    with session_scope(engine) as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.registered_model_name == registry.model_name)).one()
        assert row.version == version_label(registry.model_name, 1)
        assert (row.registry_version, row.mlflow_run_id, row.sha256_hash) == (1, registered.run_id, registered.checkpoint_sha256)
        assert row.file_path == registered.model_uri and row.metrics == {"gate_score": 0.25}
        assert row.aliases == [CHALLENGER] and not row.is_production
        [event] = alias_history(session, registry.model_name)
        assert (event.alias, event.from_version, event.to_version, event.moved_by) == (
            CHALLENGER, None, row.version, "dagster:dagster-run-1")


def test_tagged_sha256_equals_the_downloaded_checkpoint(registry, engine, trained, tmp_path):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    downloaded = registry.download_checkpoint(registered.version, tmp_path)
    assert downloaded == tmp_path / "checkpoint.pt"
    assert file_sha256(downloaded) == registry.version_tags(registered.version)["checkpoint_sha256"]
    assert downloaded.read_bytes() == checkpoint.read_bytes()

    loaded = registry.load_model(registered.version)
    assert loaded.field_size == FIELD_SIZE
    assert torch.equal(loaded.networks.nn1.fc1.weight, model.networks.nn1.fc1.weight)
    assert torch.equal(loaded.field0, model.field0)


def test_model_loads_with_mlflow_pytorch_and_pyfunc(registry, engine, trained):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    vectors = np.random.default_rng(0).normal(0, 0.1, (4, FIELD_SIZE)).astype(np.float32)
    expected = QuadraPolicyModule.from_model(model)(torch.from_numpy(vectors)).numpy()

    with mlflow_fluent_api(registry.tracking_uri):
        module = mlflow.pytorch.load_model(f"models:/{registry.model_name}/{registered.version}")
        pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.model_name}@{CHALLENGER}")
    assert isinstance(module, QuadraPolicyModule)
    np.testing.assert_allclose(module(torch.from_numpy(vectors)).numpy(), expected, rtol=1e-6)

    schema = pyfunc.metadata.get_input_schema()
    assert schema is not None and schema.inputs[0].shape == (-1, FIELD_SIZE)
    example = pyfunc.input_example
    assert example is not None and np.asarray(example).shape == (1, FIELD_SIZE)
    assert pyfunc.predict(np.asarray(example, dtype=np.float32)).shape == (1, 3)
    predicted = pyfunc.predict(vectors)
    assert predicted.shape == (4, 3)
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)


def test_challenger_moves_to_each_new_version(registry, engine, trained, tmp_path):
    model, checkpoint = trained
    first = register(registry, engine, model, checkpoint)
    other = make_model(seed=1)
    second = register(registry, engine, other, write_checkpoint(tmp_path / "second.pt", other))

    assert (first.version, second.version) == (1, 2)
    assert second.previous_challenger == 1
    assert registry.alias_version(CHALLENGER) == 2
    assert second.checkpoint_sha256 != first.checkpoint_sha256
    labels = [version_label(registry.model_name, v) for v in (1, 2)]
    assert store_snapshot(engine, registry.model_name) == (
        [(labels[0], False, []), (labels[1], False, [CHALLENGER])],
        [(CHALLENGER, None, labels[0], "dagster:dagster-run-1"), (CHALLENGER, labels[0], labels[1], "dagster:dagster-run-1")],
    )


def test_log_metrics_are_stepped_and_batched(registry):
    rows = [{"batch_number": b, "loss": 1 / b, "reward": float(b), "k_clusters": 3} for b in range(1, 401)]
    with registry.run("metrics") as run_id:
        assert registry.log_metrics(run_id, rows) == 1200  # two log_batch calls (1000 + 200)
        registry.log_params(run_id, {f"p{i}": i for i in range(150)})  # two batches of params
    assert registry.metric_history_length(run_id, "loss") == 400
    assert registry.metric_history_length(run_id, "no-such-metric") == 0
    history = registry.client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 401))
    assert {m.step: m.value for m in history}[4] == 0.25
    run = registry.client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(run.data.params) == 150
    assert "batch_number" not in run.data.metrics


def test_register_on_a_run_that_already_ended(registry, engine, trained):
    """The Dagster assets end the training run before the registry asset registers its model;
    non-finite metrics become null in the mirror (PostgreSQL's JSON refuses NaN)."""
    model, checkpoint = trained
    with registry.run("trained earlier") as run_id:
        pass
    registered = register_and_mirror(registry, engine, run_id=run_id, model=model, checkpoint_path=checkpoint,
                                     tags=TAGS, metrics={"gate_score": float("nan"), "held_out_loss": 1.5})
    assert registry.run_status(run_id) == "FINISHED"
    assert registry.version_tags(registered.version)["metric.gate_score"] == "nan"
    with session_scope(engine) as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.registered_model_name == registry.model_name)).one()
        assert row.metrics == {"gate_score": None, "held_out_loss": 1.5}


def test_log_metrics_refuses_rows_without_a_step_or_with_text(registry):
    with registry.run("bad metrics") as run_id:
        with pytest.raises(RegistryError, match="has no 'batch_number'"):
            registry.log_metrics(run_id, [{"loss": 1.0}])
        with pytest.raises(RegistryError, match="loss = 'high' is not a number"):
            registry.log_metrics(run_id, [{"batch_number": 1, "loss": "high"}])
    assert registry.client.get_run(run_id).data.metrics == {}


def test_run_context_marks_failed_runs_failed(registry, tmp_path, trained):
    model, _ = trained
    with pytest.raises(RegistryError, match="does not exist"):
        with registry.run("doomed") as run_id:
            registry.register(run_id, model, tmp_path / "missing.pt", tags=TAGS)
    assert registry.run_status(run_id) == "FAILED"
    assert registry.list_versions() == []
    with pytest.raises(RegistryError, match="run status must be one of"):
        registry.end_run(run_id, "DONE")


def test_a_failure_inside_register_leaves_no_version(registry, engine, trained):
    """The registry refuses the version's tags after the model was logged: no version, the run
    FAILED, the logged model marked FAILED, no mirror row."""
    model, checkpoint = trained
    with pytest.raises(RegistryError, match="could not create a version"):
        register(registry, engine, model, checkpoint, tags={**TAGS, "data_fingerprint": "x" * 100_001})
    assert registry.list_versions() == []
    assert registry.alias_version(CHALLENGER) is None
    assert store_snapshot(engine, registry.model_name) == ([], [])
    [run] = registry.client.search_runs([registry.experiment_id()], f"attributes.run_id = '{_last_run(registry)}'")
    assert run.info.status == "FAILED"


def _last_run(registry):
    runs = registry.client.search_runs([registry.experiment_id()], order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id


def test_a_failing_database_mirror_removes_the_new_version_again(registry, engine, trained, tmp_path):
    """The store already holds the label the new version would get (e.g. the MLflow store was
    reset but the database was not): the version is deleted from MLflow again and challenger
    goes back to the version that held it."""
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    clash = version_label(registry.model_name, 2)
    with session_scope(engine) as session:
        register_model_version(session, version=clash, sha256_hash="0" * 64, registered_model_name="someone-else")
    before = store_snapshot(engine, registry.model_name)

    with pytest.raises(RegistryError, match="removed from MLflow again"):
        register(registry, engine, model, checkpoint)
    assert [v.version for v in registry.list_versions()] == [1]
    assert registry.alias_version(CHALLENGER) == 1
    assert store_snapshot(engine, registry.model_name) == before


def test_set_alias_refuses_an_unknown_version(registry, engine, trained):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    with pytest.raises(UnknownModelVersionError, match=r"version 7 does not exist .*known versions: 1\)"):
        registry.set_alias(CHAMPION, 7)
    assert registry.aliases() == {CHALLENGER: 1}
    assert registry.set_alias(CHAMPION, 1) is None
    assert registry.set_alias(CHAMPION, 1) == 1


# Promote, rollback, history -----------------------------------------------------------------


def test_promote_moves_champion_and_records_who_when_from_to(registry, engine, trained):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    before = dt.datetime.now(dt.timezone.utc)
    assert promote(registry, engine, 1, moved_by="cli:tester", reason="first champion") is None
    after = dt.datetime.now(dt.timezone.utc)

    assert registry.aliases() == {CHALLENGER: 1, CHAMPION: 1}
    with session_scope(engine) as session:
        events = alias_history(session, registry.model_name, CHAMPION)
        assert [(e.from_version, e.to_version, e.moved_by, e.reason) for e in events] == [
            (None, version_label(registry.model_name, 1), "cli:tester", "first champion")]
        assert before <= events[0].moved_at <= after
        assert production_version(session, registry.model_name).registry_version == 1


def test_promote_of_an_unknown_version_changes_nothing(registry, engine, trained):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    promote(registry, engine, 1, moved_by="cli:tester", reason=None)
    aliases, store = registry.aliases(), store_snapshot(engine, registry.model_name)

    with pytest.raises(UnknownModelVersionError, match="version 5 does not exist"):
        promote(registry, engine, 5, moved_by="cli:tester", reason="typo")
    assert registry.aliases() == aliases == {CHALLENGER: 1, CHAMPION: 1}
    assert store_snapshot(engine, registry.model_name) == store


def test_promote_rolls_the_database_back_when_mlflow_refuses(registry, engine, trained):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    store = store_snapshot(engine, registry.model_name)
    with pytest.raises(RegistryError, match="could not set alias 'latest'"):
        promote(registry, engine, 1, alias="latest", moved_by="cli:tester", reason=None)  # reserved by MLflow
    assert registry.aliases() == {CHALLENGER: 1}
    assert store_snapshot(engine, registry.model_name) == store


def test_rollback_and_who_was_champion_at_a_time(registry, engine, trained, tmp_path):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    other = make_model(seed=2)
    register(registry, engine, other, write_checkpoint(tmp_path / "v2.pt", other))
    label1, label2 = (version_label(registry.model_name, v) for v in (1, 2))

    promote(registry, engine, 1, moved_by="dagster:run-a", reason="passed the gate")
    t1 = dt.datetime.now(dt.timezone.utc)
    assert promote(registry, engine, 2, moved_by="dagster:run-b", reason="better") == 1
    t2 = dt.datetime.now(dt.timezone.utc)
    assert promote(registry, engine, 1, moved_by="cli:ops", reason="rollback: v2 misbehaves") == 2  # the rollback
    t3 = dt.datetime.now(dt.timezone.utc)

    assert registry.alias_version(CHAMPION) == 1
    assert registry.alias_version(CHALLENGER) == 2
    with session_scope(engine) as session:
        at = lambda when: alias_holder_at(session, registry.model_name, CHAMPION, when)  # noqa: E731
        assert at(t1 - dt.timedelta(days=1)) is None
        assert (at(t1), at(t2), at(t3)) == (label1, label2, label1)
        moves = [(e.from_version, e.to_version, e.moved_by) for e in alias_history(session, registry.model_name, CHAMPION)]
        assert moves == [(None, label1, "dagster:run-a"), (label1, label2, "dagster:run-b"), (label2, label1, "cli:ops")]
        assert production_version(session, registry.model_name).version == label1

    listing = list_with_history(registry, engine)
    assert listing.aliases == {CHALLENGER: 2, CHAMPION: 1} and listing.drift == []
    assert [(v.version, v.aliases) for v in listing.versions] == [(1, [CHAMPION]), (2, [CHALLENGER])]
    assert [(m.alias, m.to_version) for m in listing.history][-1] == (CHAMPION, label1)
    assert listing.as_dict()["versions"][0]["mirrored"] is True


def test_promote_mirrors_a_version_the_database_does_not_know(registry, engine, trained):
    """A version registered without the mirror (older code, new database) gets its row first."""
    model, checkpoint = trained
    with registry.run("unmirrored") as run_id:
        registered = registry.register(run_id, model, checkpoint, tags=TAGS, metrics={"gate_score": 0.5})
    assert list_with_history(registry, engine).mirrored == {1: False}

    promote(registry, engine, registered.version, moved_by="cli:tester", reason=None)
    with session_scope(engine) as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.registered_model_name == registry.model_name)).one()
        assert (row.registry_version, row.sha256_hash, row.mlflow_run_id) == (1, registered.checkpoint_sha256, run_id)
        assert row.metrics == {"gate_score": 0.5} and row.is_production and row.aliases == [CHAMPION]


# Import -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [100, 150])
def test_import_an_original_checkpoint(registry, engine, tmp_path, n):
    original = tmp_path / f"original_{n}.pth"
    write_original(original, n)
    registered = import_checkpoint(registry, engine, original, description="", moved_by="cli:importer")

    tags = registry.version_tags(registered.version)
    assert tags["source"] == "import" and tags["checkpoint_format"] == "original"
    assert tags["field_size"] == str(n) and tags["data_fingerprint"] == "unknown"
    assert "dagster_run_id" not in tags
    assert tags["checkpoint_sha256"] == file_sha256(original)
    assert registry.alias_version(CHALLENGER) == registered.version
    assert registry.run_status(registered.run_id) == "FINISHED"
    run = registry.client.get_run(registered.run_id)
    assert run.data.tags["source"] == "import" and "probe_update_field" in run.data.metrics

    downloaded = registry.download_checkpoint(registered.version, tmp_path / "back.pth")
    assert downloaded.read_bytes() == original.read_bytes()  # the user's file, byte for byte
    assert load_checkpoint(downloaded).format == "original"
    with mlflow_fluent_api(registry.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(registered.model_uri)
    assert pyfunc.predict(np.zeros((2, n), np.float32)).shape == (2, 3)
    with session_scope(engine) as session:
        [event] = alias_history(session, registry.model_name)
        assert (event.alias, event.moved_by) == (CHALLENGER, "cli:importer")


def test_import_refuses_a_bad_file_before_touching_anything(registry, engine, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    experiment = registry.experiment_id()
    runs_before = len(registry.client.search_runs([experiment], max_results=1000))
    with pytest.raises(CheckpointError, match="notes.pth"):
        import_checkpoint(registry, engine, bad, description="", moved_by="cli:importer")
    assert registry.list_versions() == []
    assert len(registry.client.search_runs([experiment], max_results=1000)) == runs_before
    with session_scope(engine) as session:
        count = session.scalar(
            select(func.count()).select_from(ModelAliasEvent).where(ModelAliasEvent.model_name == registry.model_name))
        assert count == 0


def test_run_url_and_experiment_location(registry, tracking):
    with registry.run("links") as run_id:
        pass
    url = registry.run_url(run_id, "http://127.0.0.1:5000/")
    assert url == f"http://127.0.0.1:5000/#/experiments/{registry.experiment_id()}/runs/{run_id}"
    location = registry.client.get_experiment(registry.experiment_id()).artifact_location
    if tracking.artifact_root is not None:  # local store: under our artifact root, never ./mlruns
        assert location == (tracking.artifact_root.resolve() / registry.experiment_name).as_uri()
    else:  # server: proxied to --artifacts-destination
        assert location.startswith("mlflow-artifacts:")


def test_registry_for_another_model_name_is_separate(tracking, registry, engine, trained):
    model, checkpoint = trained
    register(registry, engine, model, checkpoint)
    other = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=registry.model_name + "-other")
    assert other.list_versions() == [] and other.aliases() == {}
    with pytest.raises(UnknownModelVersionError, match="no versions are registered"):
        other.get_version(1)
