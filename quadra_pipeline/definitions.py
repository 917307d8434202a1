"""The Dagster code location: `dagster dev`, `dagster job execute -m quadra_pipeline.definitions`.

Everything under `quadra_pipeline/defs/` is loaded from the folder (one folder per domain);
cross-cutting policies are applied once here. In production, loading refuses to start
without a usable QUADRA_SECRET_KEY (the settings say which variable is wrong).
"""

from pathlib import Path

import dagster as dg
from dotenv import load_dotenv

from .settings import RunExecutor, SettingsError, load_settings


@dg.definitions
def defs() -> dg.Definitions:
    load_dotenv(override=False)  # dg.EnvVar reads os.environ; the settings also read .env
    settings = load_settings()  # fail the code location early, with one clear message, on bad settings
    return dg.Definitions.merge(_load_defs_folder(), dg.Definitions(executor=run_executor(settings.run_executor)))


def run_executor(choice: RunExecutor) -> dg.ExecutorDefinition:
    """The executor of every job, including the one the UI builds for "Materialize".

    By default a run's steps share its process (a process per step would re-import torch and
    MLflow, ~10 s each here), with waits for a pool slot that sleep, stop on a signal and free
    the slots of dead runs. On Kubernetes, QUADRA_RUN_EXECUTOR=k8s_job isolates each step in
    its own pod (Dagster's `k8s_job_executor`, configured by the run launcher's `runK8sConfig`
    and the run's `execution` config). Its step pods are owned by the run pod: a run pod that
    dies (an OOM kill, a lost node) takes its steps with it, so a pool slot that run monitoring
    frees is never still used by an orphaned step. QUADRA_RUN_EXECUTOR=celery sends each step
    to whichever Celery worker takes it (`defs/runs/celery.py`, `quadra worker`): a sweep's
    trials fan out across worker hosts.
    """
    if choice is RunExecutor.celery:
        from .defs.runs.celery import quadra_celery_executor

        return quadra_celery_executor()
    if choice is RunExecutor.k8s_job:
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise SettingsError(
                "QUADRA_RUN_EXECUTOR=k8s_job needs dagster-k8s: pip install 'quadra-pipeline[deploy]'"
            ) from exc
        return k8s_job_executor.configured(
            lambda config: {**config, "enable_owner_references": True},
            config_schema=k8s_job_executor.config_schema.config_type,
            name=k8s_job_executor.name,
        )
    from .defs.runs.executor import quadra_in_process_executor

    return quadra_in_process_executor


def _load_defs_folder() -> dg.Definitions:
    try:
        return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    except Exception as exc:
        if "Could not find config file" not in str(exc):
            raise
    # Installed without pyproject.toml beside the package (a wheel): same folder, loaded by module.
    from dagster.components.core.component_tree import ComponentTree

    from . import defs as defs_module

    return ComponentTree.from_module(defs_module=defs_module, project_root=Path(__file__).parent.parent).build_defs()
