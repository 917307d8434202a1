"""The whole graph, materialised against a real Dagster instance, MLflow store and database."""

import hashlib
import logging
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from quadra_pipeline.definitions import defs as load_defs
from quadra_pipeline_tests.defs.conftest import run_config


def training_job():
    return load_defs().resolve_job_def("training_job")


def registry():
    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline.settings import load_settings

    settings = load_settings()
    return ModelRegistry(settings.mlflow_tracking_uri, str(settings.mlflow_artifact_root))


def store_rows(table):
    from quadra_pipeline.settings import load_settings

    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"select * from {table}"))]


def check_results(result):
    return {
        (e.asset_check_evaluation_data.asset_key.to_user_string(), e.asset_check_evaluation_data.check_name): e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }


def failure_text(result) -> str:
    """The failed step's error and its causes, as the run log shows them."""
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    texts, error = [], failure.event_specific_data.error
    while error is not None:
        texts.append(error.message)
        error = error.cause
    return "\n".join(texts)


def materialized(result):
    return sorted(
        e.asset_key.to_user_string() for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    )


@pytest.mark.slow
def test_whole_graph_then_a_worse_model_is_registered_but_not_champion(instance, quadra_env):
    # 1. A good model: trained for 12 batches. Everything materialises, every check passes.
    first = training_job().execute_in_process(run_config=run_config(batches=12), instance=instance)
    assert first.success
    assert materialized(first) == [
        "champion_model", "corpus", "model_evaluation", "quadra_model", "registered_model", "system_state", "training_metrics",
    ]
    assert all(check_results(first).values()) and len(check_results(first)) == 4

    reg = registry()
    versions = reg.list_versions()
    assert [v.version for v in versions] == [1]
    tags = reg.version_tags(1)
    assert tags["dagster_run_id"] == first.run_id
    assert {"checkpoint_sha256", "code_version", "data_fingerprint"} <= set(tags)
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = reg.download_checkpoint(1, Path(tmp))
        assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == tags["checkpoint_sha256"]
    assert reg.alias_version("champion") == 1 and reg.alias_version("challenger") == 1

    metrics = store_rows("training_metrics")
    assert len(metrics) == 12 and None not in {m["model_version_id"] for m in metrics}
    import mlflow

    mlflow.set_tracking_uri(reg.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/quadra-matrix@champion")
    import numpy as np

    assert model.predict(np.zeros((2, 24), dtype=np.float32)).shape == (2, 3)

    # The materialisation carries the curve, the MLflow link and the final figures.
    event = instance.get_latest_materialization_event(dg.AssetKey("quadra_model"))
    metadata = event.asset_materialization.metadata
    assert metadata["curve"].value.startswith("![loss and reward per batch](data:image/png;base64,")
    assert "#/experiments/" in metadata["mlflow_run"].value
    assert metadata["batches"].value == 12 and metadata["rows_per_second"].value > 0

    # 2. A deliberately worse model (one batch): registered as challenger, champion stays.
    second = training_job().execute_in_process(run_config=run_config(batches=1), instance=instance, raise_on_error=False)
    assert not second.success  # the blocking gate failed the run...
    checks = check_results(second)
    assert checks[("registered_model", "not_worse_than_champion")] is False
    assert checks[("registered_model", "checkpoint_sha256_matches")] is True
    assert "champion_model" not in materialized(second)  # ...and kept the champion where it was
    assert [v.version for v in reg.list_versions()] == [1, 2]
    assert reg.alias_version("champion") == 1 and reg.alias_version("challenger") == 2

    events = store_rows("model_alias_events")
    champion_moves = [e for e in events if e["alias"] == "champion"]
    assert len(champion_moves) == 1 and champion_moves[0]["moved_by"] == f"dagster:{first.run_id}"


def test_bad_config_is_refused_before_training(instance, quadra_env):
    result = training_job().execute_in_process(
        run_config=run_config(batches=0), instance=instance, raise_on_error=False
    )
    assert not result.success
    text = failure_text(result)
    assert "train_model config refused before anything ran" in text
    assert "batches: Input should be greater than or equal to 1" in text
    assert materialized(result) == []  # not even the corpus: the first step checked the config
    assert not (quadra_env / "quadra.db").exists() and not list(quadra_env.rglob("*.pt"))


def test_a_corpus_too_small_for_the_batches_is_refused_first(instance, quadra_env):
    config = run_config(batches=50, training_rows=100)
    result = training_job().execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    assert "the corpus has 100 training rows, but batches=50 x rows_per_batch=10 needs 500" in failure_text(result)
    assert materialized(result) == []


def test_missing_corpus_file_is_a_clear_failure(instance, quadra_env, tmp_path):
    config = run_config()
    config["ops"]["corpus"]["config"] = {"source": "file", "source_options": {"path": str(tmp_path / "nope.jsonl")}}
    result = training_job().execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    assert "nope.jsonl does not exist" in failure_text(result)
    assert materialized(result) == []


def test_unreachable_mlflow_server_fails_fast_and_registers_nothing(instance, quadra_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    result = training_job().execute_in_process(run_config=run_config(), instance=instance, raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert "unreachable" in message and "attempts" in message  # bounded retries, said so
    assert materialized(result) == ["corpus"]  # nothing trained, nothing registered
    assert not list(quadra_env.rglob("*.pt"))


def test_resume_from_a_checkpoint_and_roll_back_the_champion(instance, quadra_env):
    job = training_job()
    first = job.execute_in_process(run_config=run_config(batches=6, checkpoint_every=3), instance=instance)
    assert first.success
    checkpoint = quadra_env / "checkpoints" / first.run_id / "checkpoint.pt"
    config = run_config(batches=8, resume_from=str(checkpoint))
    config["ops"]["registered_model"] = {"config": {"tolerance": 1.0}}  # this test is about resuming, not the gate
    resumed = job.execute_in_process(run_config=config, instance=instance)
    assert resumed.success
    checks = check_results(resumed)
    assert checks[("training_metrics", "one_row_per_batch")] and checks[("quadra_model", "weights_finite")]
    event = instance.get_latest_materialization_event(dg.AssetKey("quadra_model"))
    assert event.run_id == resumed.run_id
    assert event.asset_materialization.metadata["resumed_from_batch"].value == 6
    assert event.asset_materialization.metadata["batches"].value == 8
    runs = store_rows("training_runs")
    metrics = store_rows("training_metrics")
    first_run, second_run = (next(r["id"] for r in runs if r["external_run_id"] == run.run_id) for run in (first, resumed))
    assert sorted(m["batch_number"] for m in metrics if m["training_run_id"] == first_run) == [1, 2, 3, 4, 5, 6]
    # The resumed run holds the whole history: 1..6 carried over (with their own times), 7..8 trained.
    resumed_rows = sorted((m for m in metrics if m["training_run_id"] == second_run), key=lambda m: m["batch_number"])
    assert [m["batch_number"] for m in resumed_rows] == list(range(1, 9))
    first_rows = sorted((m for m in metrics if m["training_run_id"] == first_run), key=lambda m: m["batch_number"])
    assert [m["timestamp"] for m in resumed_rows[:6]] == [m["timestamp"] for m in first_rows]
    reg = registry()
    mlflow_run = next(r for r in runs if r["id"] == second_run)["mlflow_run_id"]
    assert sorted(reg.metric_steps(mlflow_run, "loss")) == list(range(1, 9))
    assert reg.alias_version("champion") == 2  # the resumed model became champion...

    # ... and is rolled back: promote_model_job moves champion to version 1, recorded with who and why.
    assert [v.version for v in reg.list_versions()] == [1, 2]
    rollback = load_defs().resolve_job_def("promote_model_job").execute_in_process(
        run_config={"ops": {"promote_version": {"config": {"version": 1, "reason": "rollback drill"}}}}, instance=instance
    )
    assert rollback.success and reg.alias_version("champion") == 1
    last = store_rows("model_alias_events")[-1]
    assert (last["alias"], last["reason"], last["moved_by"]) == ("champion", "rollback drill", f"dagster:{rollback.run_id}")
    # The asset graph shows the new champion: the rollback is champion_model's newest materialisation.
    champion = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    assert champion.run_id == rollback.run_id
    metadata = champion.asset_materialization.metadata
    assert (metadata["version"].value, metadata["previous_version"].value) == (1, 2)
    assert metadata["reason"].value == "rollback drill"


def materialize_only(instance, *keys, run_config=None):
    defs = load_defs()
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in keys], run_config=run_config or {}, raise_on_error=False
    )


@pytest.mark.slow
def test_assets_on_their_own_cannot_bypass_the_gate_or_duplicate_versions(instance, quadra_env):
    job = training_job()
    assert job.execute_in_process(run_config=run_config(batches=12), instance=instance).success
    worse = job.execute_in_process(run_config=run_config(batches=1), instance=instance, raise_on_error=False)
    assert not worse.success
    reg = registry()
    assert reg.alias_version("champion") == 1 and reg.alias_version("challenger") == 2

    # The UI's "Materialize" on champion_model alone: refused, champion stays.
    alone = materialize_only(instance, "champion_model")
    assert not alone.success
    assert "version 2 did not pass the champion gate" in failure_text(alone)
    assert reg.alias_version("champion") == 1

    # registered_model alone, for the same checkpoint: no second copy of it in the registry.
    again = materialize_only(instance, "registered_model")
    assert [v.version for v in reg.list_versions()] == [1, 2]
    assert check_results(again)[("registered_model", "not_worse_than_champion")] is False


def test_an_asset_whose_upstream_never_ran_says_so(instance, quadra_env):
    result = materialize_only(instance, "model_evaluation")
    assert not result.success
    assert "quadra_model has never been materialised" in failure_text(result)


@pytest.mark.slow
def test_mlflow_down_between_training_and_registering_leaves_no_partial_version(instance, quadra_env, monkeypatch):
    config = run_config(batches=3)
    trained = materialize_only(instance, "corpus", "quadra_model", "training_metrics", "system_state", "model_evaluation", run_config=config)
    assert trained.success
    good_uri = registry().tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    result = materialize_only(instance, "registered_model")
    assert not result.success and "unreachable" in failure_text(result)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", good_uri)
    assert registry().list_versions() == []
    assert store_rows("model_versions") == []


def test_weights_finite_reads_the_checkpoint_and_fails_on_a_nan_weight(instance, quadra_env):
    """The check computes its answer from the file (load_checkpoint would refuse the file
    before any check could look at it): a NaN written into a weight makes it fail, blocking."""
    import torch

    from quadra_pipeline.model.checkpoint import non_finite_tensors

    trained = materialize_only(instance, "corpus", "quadra_model", "training_metrics", "system_state", run_config=run_config())
    assert trained.success and check_results(trained)[("quadra_model", "weights_finite")]
    path = Path(instance.get_latest_materialization_event(dg.AssetKey("quadra_model")).asset_materialization.metadata[
        "checkpoint_path"].value)
    payload = torch.load(path, weights_only=True)
    payload["nn2"]["fc1.weight"][0, 0] = float("nan")
    torch.save(payload, path)
    assert non_finite_tensors(path) == ["nn2.fc1.weight"]

    check_only = dg.define_asset_job(
        "weights_only", selection=dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("quadra_model"), "weights_finite"))
    )
    job = dg.Definitions.merge(load_defs(), dg.Definitions(jobs=[check_only])).resolve_job_def("weights_only")
    checked = job.execute_in_process(instance=instance, raise_on_error=False)
    [evaluation] = [e.asset_check_evaluation_data for e in checked.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    assert not evaluation.passed and evaluation.metadata["non_finite_tensors"].value == ["nn2.fc1.weight"]


def test_a_run_that_failed_while_mlflow_was_down_has_its_mlflow_run_closed_by_the_next_run(instance, quadra_env):
    """Training failed and MLflow could not be told (it was the broken part): SQL says failed,
    the MLflow run still says RUNNING. The next training run closes it: the batches SQL has are
    sent, and the MLflow run is marked FAILED."""
    from quadra_pipeline.settings import load_settings
    from quadra_pipeline.store import ensure_schema, finish_training_run, make_engine, session_scope, set_mlflow_run, start_training_run
    from quadra_pipeline.store.runs import append_metric

    engine = make_engine(load_settings().database_url)
    ensure_schema(engine)
    reg = registry()
    left_open = reg.start_run("failed-while-mlflow-was-down")
    with session_scope(engine) as session:
        failed = start_training_run(session, external_run_id="dagster-run-that-failed", field_size=16, seed=0).id
        set_mlflow_run(session, failed, left_open)
    for batch in (1, 2):
        append_metric(engine, failed, {"batch_number": batch, "loss": 0.5, "reward": 1.0, "variance": 0.1, "field_mean": 0.0})
    with session_scope(engine) as session:
        finish_training_run(session, failed, status="failed", error="RegistryUnavailableError: MLflow tracking server ... is unreachable")
    engine.dispose()
    assert reg.run_status(left_open) == "RUNNING"

    result = training_job().execute_in_process(run_config=run_config(batches=3), instance=instance)
    assert result.success
    assert reg.run_status(left_open) == "FAILED"
    assert sorted(reg.metric_steps(left_open, "loss")) == [1, 2]  # completed from the database


def test_training_runs_whose_mlflow_run_was_deleted_never_block_training(instance, quadra_env):
    """A training run left "running" by a dead Dagster run, and a failed one, each with an MLflow
    run deleted since (by a user, in the UI): their MLflow runs cannot be told anything, which is
    logged; the next training run still succeeds, and the dead one ends failed in SQL."""
    from mlflow import MlflowClient

    from quadra_pipeline.settings import load_settings
    from quadra_pipeline.store import (ensure_schema, finish_training_run, get_training_run, make_engine, session_scope,
                                       set_mlflow_run, start_training_run)
    from quadra_pipeline.store.runs import append_metric

    @dg.asset
    def ended() -> int:
        return 1

    dead_dagster_run = dg.materialize([ended], instance=instance).run_id  # a finished run of this instance
    settings = load_settings()
    engine = make_engine(settings.database_url)
    ensure_schema(engine)
    reg = registry()
    deleted = {name: reg.start_run(name) for name in ("dead", "failed")}
    with session_scope(engine) as session:
        dead = start_training_run(session, external_run_id=dead_dagster_run, field_size=16, seed=0).id
        set_mlflow_run(session, dead, deleted["dead"])
        failed = start_training_run(session, external_run_id="dagster-run-that-failed", field_size=16, seed=0).id
        set_mlflow_run(session, failed, deleted["failed"])
    for run in (dead, failed):
        append_metric(engine, run, {"batch_number": 1, "loss": 0.5, "reward": 1.0, "variance": 0.1, "field_mean": 0.0})
    with session_scope(engine) as session:
        finish_training_run(session, failed, status="failed", error="RegistryUnavailableError: MLflow tracking server ... is unreachable")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    for run_id in deleted.values():
        client.delete_run(run_id)

    result = training_job().execute_in_process(run_config=run_config(batches=3), instance=instance)
    assert result.success
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    for run_id in deleted.values():
        assert any(f"could not close MLflow run {run_id}" in m for m in warnings), warnings
    with session_scope(engine) as session:
        assert get_training_run(session, dead).status == "failed"
    engine.dispose()
