"""The Dagster code location: `dagster dev`, `dagster job execute -m quadra_pipeline.definitions`.

Everything under `quadra_pipeline/defs/` is loaded from the folder (one folder per domain);
cross-cutting policies are applied once here. In production, loading refuses to start
without a usable QUADRA_SECRET_KEY (the settings say which variable is wrong).
"""

from pathlib import Path

import dagster as dg
from dotenv import load_dotenv

from .settings import load_settings


@dg.definitions
def defs() -> dg.Definitions:
    load_dotenv(override=False)  # dg.EnvVar reads os.environ; the settings also read .env
    load_settings()  # fail the code location early, with one clear message, on bad settings
    from .defs.runs.executor import quadra_in_process_executor

    return dg.Definitions.merge(
        _load_defs_folder(),
        # Every job, including the one the UI builds for "Materialize", runs in one process (a
        # process per step would re-import torch and MLflow, ~10 s each here), with waits for
        # a pool slot that sleep, stop on a signal and free the slots of dead runs.
        dg.Definitions(executor=quadra_in_process_executor),
    )


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
