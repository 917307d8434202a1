"""sweep_job on the local (in-process) executor, against a real Dagster instance, MLflow store
and database: trials as MLflow child runs of one parent run, the best registered as challenger
and put through the champion gate, lineage, failed trials, and every bad input refused before
any trial runs."""

import math

import dagster as dg
import pytest
import torch
from mlflow import MlflowClient

from quadra_pipeline.definitions import defs as load_defs
from quadra_pipeline_tests.defs.test_pipeline import check_results, failure_text, materialized, registry, store_rows

SMALL = {"field_size": 24, "batches": 4, "rows_per_batch": 10}


def sweep_config(grid=None, fixed=None, training_rows=400, tolerance=0.0, **sweep):
    return {
        "ops": {
            "corpus": {"config": {"training_rows": training_rows, "held_out_rows": 60}},
            "hyperparameter_sweep": {"config": {"grid": {"learning_rate": [0.001, 0.005], "seed": [0, 1]} if grid is None else grid,
                                                "fixed": SMALL if fixed is None else fixed, **sweep}},
            "sweep_registered_model": {"config": {"tolerance": tolerance}},
        }
    }


def sweep_job():
    return load_defs().resolve_job_def("sweep_job")


def runs_of(client: MlflowClient, filter_string: str):
    experiment = client.get_experiment_by_name("quadra-matrix")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string, max_results=1000)


@pytest.mark.slow
def test_a_four_trial_sweep_registers_its_best_trial_through_the_gate(instance, quadra_env):
    result = sweep_job().execute_in_process(run_config=sweep_config(), instance=instance)
    assert result.success
    # Lineage, as for training_job: corpus -> sweep -> registered version -> champion.
    assert materialized(result) == ["champion_model", "corpus", "hyperparameter_sweep", "sweep_registered_model"]
    assert check_results(result) == {("sweep_registered_model", "checkpoint_sha256_matches"): True,
                                     ("sweep_registered_model", "not_worse_than_champion"): True}
    trial_steps = sorted(e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS
                         and e.step_key.startswith("hyperparameter_sweep.run_trial["))
    assert trial_steps == [f"hyperparameter_sweep.run_trial[trial_00{i}]" for i in range(4)]  # one step per trial

    reg = registry()
    client = MlflowClient(reg.tracking_uri)
    [parent] = runs_of(client, f"tags.dagster_run_id = '{result.run_id}' and tags.`quadra.sweep` = 'parent'")
    children = runs_of(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "4"
    assert '"learning_rate": [0.001, 0.005]' in parent.data.params["space.grid"]
    by_trial = {c.data.tags["trial"]: c for c in children}
    assert sorted(by_trial) == ["trial_000", "trial_001", "trial_002", "trial_003"]
    for child in children:
        assert child.data.tags["worker"]  # where it ran
        assert child.data.params["field_size"] == "24" and child.data.params["batches"] == "4"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == [1, 2, 3, 4]  # per-batch metrics
        assert math.isfinite(child.data.metrics["eval_policy_probe_loss"])
    assert {(c.data.params["learning_rate"], c.data.params["seed"]) for c in children} == {
        ("0.001", "0"), ("0.001", "1"), ("0.005", "0"), ("0.005", "1")}
    # The best trial: the lowest gate score, recorded on the parent run.
    best = min(children, key=lambda c: (c.data.metrics["eval_policy_probe_loss"], c.data.tags["trial"]))
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best_gate_score"] == pytest.approx(best.data.metrics["eval_policy_probe_loss"])
    assert parent.data.metrics["trials_succeeded"] == 4 and parent.data.metrics["trials_failed"] == 0

    # Registered once, as challenger, linked to its child run and the sweep's parent run; the
    # gate passed (no champion before), so it is champion too.
    versions = reg.list_versions()
    assert [v.version for v in versions] == [1]
    assert versions[0].run_id == best.info.run_id
    tags = reg.version_tags(1)
    assert tags["sweep_parent_run_id"] == parent.info.run_id and tags["sweep_trial"] == best.data.tags["trial"]
    assert reg.alias_version("challenger") == 1 and reg.alias_version("champion") == 1
    # Every trial is a training run in SQL with its batches; the version's metrics are the best trial's.
    runs = store_rows("training_runs")
    assert sorted(r["external_run_id"] for r in runs) == [f"{result.run_id}/trial_00{i}#1" for i in range(4)]
    assert {r["status"] for r in runs} == {"succeeded"} and len(store_rows("training_metrics")) == 16

    # A worse sweep (one batch): its best is registered as challenger; the gate keeps the champion.
    worse = sweep_job().execute_in_process(run_config=sweep_config(grid={"seed": [0, 1]}, fixed={**SMALL, "batches": 1}),
                                           instance=instance, raise_on_error=False)
    assert not worse.success
    assert check_results(worse)[("sweep_registered_model", "not_worse_than_champion")] is False
    assert "champion_model" not in materialized(worse)
    assert reg.alias_version("champion") == 1 and reg.alias_version("challenger") == 2


def _failing(monkeypatch, *, raise_for_seed: int | None = None, nan_for_seed: int | None = None):
    """Trials that fail on their own: training raises after its first batch, or ends with a NaN
    weight in its checkpoint (fault injection around the real training)."""
    import quadra_pipeline.tracked_training as tracked

    real = tracked.run_training

    def run_training(config, out_dir, **kwargs):
        if config.seed == raise_for_seed:
            def explode(metrics, rows):
                raise RuntimeError("simulated crash in training")
            kwargs["on_batch"] = [*kwargs.get("on_batch", []), explode]
        outcome = real(config, out_dir, **kwargs)
        if config.seed == nan_for_seed:
            payload = torch.load(outcome.checkpoint, weights_only=True)
            payload["nn1"]["fc1.weight"][0, 0] = float("nan")
            torch.save(payload, outcome.checkpoint)
        return outcome

    monkeypatch.setattr(tracked, "run_training", run_training)


def test_failed_trials_are_failed_child_runs_and_the_sweep_picks_the_best_of_the_rest(instance, quadra_env, monkeypatch):
    _failing(monkeypatch, raise_for_seed=1, nan_for_seed=2)
    result = sweep_job().execute_in_process(run_config=sweep_config(grid={"seed": [0, 1, 2]}), instance=instance)
    assert result.success
    client = MlflowClient(registry().tracking_uri)
    children = {c.data.tags["trial"]: c for c in runs_of(client, f"tags.dagster_run_id = '{result.run_id}' and tags.`quadra.sweep` = 'trial'")}
    assert {k: c.info.status for k, c in children.items()} == {"trial_000": "FINISHED", "trial_001": "FAILED", "trial_002": "FAILED"}
    assert [m.step for m in client.get_metric_history(children["trial_001"].info.run_id, "loss")] == [1]  # what it did keep
    errors = {r["external_run_id"].split("/")[1]: r["error"] for r in store_rows("training_runs") if r["status"] == "failed"}
    assert "simulated crash in training" in errors["trial_001#1"]
    assert "non-finite values in nn1.fc1.weight" in errors["trial_002#1"]
    version = registry().list_versions()[0]
    assert version.run_id == children["trial_000"].info.run_id
    [parent] = runs_of(client, f"tags.dagster_run_id = '{result.run_id}' and tags.`quadra.sweep` = 'parent'")
    assert parent.data.metrics["trials_failed"] == 2 and parent.data.tags["best_trial"] == "trial_000"


def test_a_sweep_with_no_successful_trial_fails_and_registers_nothing(instance, quadra_env, monkeypatch):
    _failing(monkeypatch, raise_for_seed=0)
    result = sweep_job().execute_in_process(run_config=sweep_config(grid={"seed": [0]}), instance=instance, raise_on_error=False)
    assert not result.success
    assert "no trial of the sweep succeeded (1 failed): trial_000: RuntimeError: simulated crash in training" in failure_text(result)
    assert registry().list_versions() == []
    client = MlflowClient(registry().tracking_uri)
    [parent] = runs_of(client, f"tags.dagster_run_id = '{result.run_id}' and tags.`quadra.sweep` = 'parent'")
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize(
    "config, message",
    [
        (sweep_config(grid={}, fixed={}), "the search space is empty"),
        (sweep_config(grid={"dropout": [0.1]}), "unknown hyperparameter 'dropout' in grid"),
        (sweep_config(grid={"learning_rate": [0.01, 1.5]}), "learning_rate = 1.5 is out of range (0 < learning_rate <= 1)"),
        (sweep_config(grid={"seed": list(range(15))}, samples=15), "the search space has 225 trials, more than the cap of 200"),
        (sweep_config(fixed={**SMALL, "batches": 50}, training_rows=100), "the corpus has 100 training rows, but the hungriest trial needs 500"),
        (sweep_config(grid={"learning_rate": [0.001]}, random={"seed": {"distribution": "int_uniform", "low": 5, "high": 1}}),
         "random seed: low 5 is above high 1"),
    ],
)
def test_bad_input_is_one_line_before_any_trial_starts(instance, quadra_env, config, message):
    result = sweep_job().execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert f"sweep refused before any trial ran: {message}" in text
    assert materialized(result) == []  # the first step refused it: not even the corpus was written
    assert not [e for e in result.all_events if e.step_key and "run_trial" in e.step_key]
    assert not (quadra_env / "mlflow.db").exists() or not registry().list_versions()


def test_the_cap_comes_from_the_settings(instance, quadra_env, monkeypatch):
    monkeypatch.setenv("QUADRA_SWEEP_MAX_TRIALS", "3")
    result = sweep_job().execute_in_process(run_config=sweep_config(), instance=instance, raise_on_error=False)
    assert "the search space has 4 trials, more than the cap of 3 (QUADRA_SWEEP_MAX_TRIALS)" in failure_text(result)
