"""Production wiring: EnvVar-backed resources, and deploy/compose/dagster.yaml on a real PostgreSQL."""

import shutil

import dagster as dg
import pytest

from quadra_pipeline_tests.production import set_production

from quadra_pipeline.defs.resources import RegistryResource, StoreResource, resources_for
from quadra_pipeline.settings import SettingsError, load_settings
from quadra_pipeline_tests.defs.conftest import REPO_ROOT
from quadra_pipeline_tests.postgres import scratch_database

GOOD_KEY = "9f" * 32


def test_production_resources_read_the_urls_from_the_environment_at_run_time(quadra_env, monkeypatch):
    set_production(monkeypatch, GOOD_KEY)
    resources = resources_for(load_settings())

    @dg.asset
    def urls(store: StoreResource, registry: RegistryResource) -> dict:
        return {"db": store.url(), "mlflow": registry.tracking_uri}

    monkeypatch.setenv("DATABASE_URL", "sqlite:///prod.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    result = dg.materialize([urls], resources={k: resources[k] for k in ("store", "registry")})
    assert result.output_for_node("urls") == {"db": "sqlite:///prod.db", "mlflow": "http://mlflow.internal:5000"}
    # The values are read when the run starts, not baked into the run's config.
    run = result.dagster_run
    assert "prod.db" not in str(run.run_config) and "mlflow.internal" not in str(run.run_config)

    # The database URL is a secret: from its file as well (how the stack passes it).
    secret = quadra_env.parent / "database_url"
    secret.write_text("sqlite:///from-a-file.db\n")
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    result = dg.materialize([urls], resources={k: resources[k] for k in ("store", "registry")})
    assert result.output_for_node("urls")["db"] == "sqlite:///from-a-file.db"
    assert "from-a-file" not in str(result.dagster_run.run_config)

    monkeypatch.delenv("DATABASE_URL_FILE")
    with pytest.raises(SettingsError, match=r"DATABASE_URL \(or DATABASE_URL_FILE\) is not set \(required when QUADRA_ENV=production"):
        dg.materialize([urls], resources={k: resources[k] for k in ("store", "registry")})
    monkeypatch.setenv("DATABASE_URL", "sqlite:///prod.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(dg.DagsterInvalidConfigError, match="MLFLOW_TRACKING_URI"):
        dg.materialize([urls], resources={k: resources[k] for k in ("store", "registry")})


def test_production_code_location_loads_without_any_secret_and_refuses_a_bad_one(quadra_env, monkeypatch, tmp_path):
    """Least privilege: the code server loads the definitions holding no signing key and no
    secret key (the runs that sign or back up need them); a secret that is set is still checked."""
    from quadra_pipeline.definitions import defs
    from quadra_pipeline.settings import SettingsError

    monkeypatch.setenv("QUADRA_ENV", "production")
    for name in ("QUADRA_SECRET_KEY", "QUADRA_MODEL_SIGNING_KEY", "QUADRA_BACKUP_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert defs().resolve_job_def("training_job") is not None
    monkeypatch.setenv("QUADRA_SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=f"QUADRA_SECRET_KEY_FILE={tmp_path / 'missing'}: cannot read the file"):
        defs()


def test_every_job_runs_in_process_by_default_and_each_step_in_a_pod_with_k8s_job(quadra_env, monkeypatch):
    """QUADRA_RUN_EXECUTOR picks the executor of every job (the option for step isolation on
    Kubernetes, set in deploy/helm/values.yaml); a wrong value names the variable and the choices."""
    from quadra_pipeline.definitions import defs
    from quadra_pipeline.defs.runs.executor import quadra_in_process_executor
    from quadra_pipeline.settings import SettingsError

    def executors() -> set[dg.ExecutorDefinition]:
        return {job.executor_def for job in defs().resolve_all_job_defs()}

    assert executors() == {quadra_in_process_executor}  # ours (it sleeps while waiting), not Dagster's
    monkeypatch.setenv("QUADRA_RUN_EXECUTOR", "K8s_Job")
    assert {executor.name for executor in executors()} == {"k8s"}
    # Dagster's k8s_job_executor, its config open to the run (the Launchpad), with step pods
    # always owned by the run pod (an orphaned step never outlives its run's pool slot).
    training = defs().resolve_job_def("training_job")
    execution = dg.validate_run_config(training, {"execution": {"config": {"max_concurrent": 2}}})["execution"]
    assert execution["k8s"]["max_concurrent"] == 2 and execution["k8s"]["enable_owner_references"] is True
    execution = dg.validate_run_config(training, {"execution": {"config": {"enable_owner_references": False}}})["execution"]
    assert execution["k8s"]["enable_owner_references"] is True
    # Celery: every job's steps are Celery tasks, the broker read from the settings when a run
    # starts (never in the job's config), except the backup's, which needs its run's volumes.
    monkeypatch.setenv("QUADRA_RUN_EXECUTOR", "celery")
    assert {executor.name for executor in executors()} == {"celery"}
    sweep = defs().resolve_job_def("sweep_job")
    assert set(dg.validate_run_config(sweep, {})["execution"]["celery"]) == {"retries"}
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.executor.init import InitExecutorContext
    from dagster_celery.executor import CeleryExecutor

    from quadra_pipeline.defs.runs.executor import QuadraInProcessExecutor

    def executor_for(job_name):
        job = defs().resolve_job_def(job_name)
        return job.executor_def.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job), executor_def=job.executor_def,
            executor_config={"retries": {"enabled": {}}}, instance=dg.DagsterInstance.ephemeral()))

    monkeypatch.setenv("QUADRA_CELERY_BROKER_URL", "amqp://guest@broker.internal:5672//")
    assert isinstance(executor_for("sweep_job"), CeleryExecutor)
    assert executor_for("sweep_job").broker == "amqp://guest@broker.internal:5672//"
    assert type(executor_for("backup_job")) is QuadraInProcessExecutor
    monkeypatch.delenv("QUADRA_CELERY_BROKER_URL")
    with pytest.raises(SettingsError, match=r"QUADRA_RUN_EXECUTOR=celery needs a broker: set QUADRA_CELERY_BROKER_URL \(or QUADRA_CELERY_BROKER_URL_FILE\)"):
        executor_for("sweep_job")
    monkeypatch.setenv("QUADRA_RUN_EXECUTOR", "ray")
    with pytest.raises(SettingsError, match=r"QUADRA_RUN_EXECUTOR.*in_process.*k8s_job.*celery"):
        defs()


@pytest.fixture
def postgres_database():
    with scratch_database("quadra_dagster") as url:
        yield url.database


@pytest.mark.postgres
def test_deploy_instance_config_runs_on_postgresql(tmp_path, monkeypatch, postgres_database, s3_env):
    """The stack's dagster.yaml for real, outside Docker: PostgreSQL storage (the password would
    come from the passfile; the test server trusts), the stack's run launcher, and step logs in
    the object store's log bucket, where the webserver reads them once the run's container is gone."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "compose" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_DB": postgres_database,
                       "QUADRA_SECRETS_HOST_DIR": str(tmp_path / "secrets")}.items():
        monkeypatch.setenv(key, value)
    s3_env.make_bucket("quadra-logs")

    @dg.asset
    def ping() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": "quadra/training", "limit": 1} in limits
        result = dg.materialize([ping], instance=instance)
        assert result.success
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_launcher).__name__ == "QuadraDockerRunLauncher"  # each run its own container
        assert instance.run_launcher.identities.keys() == {"training", "backup"}
    logs = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket="quadra-logs").get("Contents", [])]
    assert any(result.run_id in key for key in logs), logs  # the step's output, in the bucket
