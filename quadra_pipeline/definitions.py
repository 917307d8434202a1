"""The Dagster code location: `dagster dev`, `dagster job execute -m quadra_pipeline.definitions`.

Everything under `quadra_pipeline/defs/` is loaded from the folder (one folder per domain);
cross-cutting policies are applied once here. In production, loading refuses to start
without a usable QUADRA_SECRET_KEY (the settings say which variable is wrong).
"""

from pathlib import Path

import dagster as dg

from .settings import load_settings


@dg.definitions
def defs() -> dg.Definitions:
    load_settings()  # fail the code location early, with one clear message, on bad settings
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
