"""The Dagster code location (`dagster dev -m quadra_pipeline.definitions`).

The foundation issue ships it empty so that workspace.yaml and dagster.yaml can be checked;
the pipeline issue adds the assets, checks, jobs and schedules under `defs/`.
"""

import dagster as dg

defs = dg.Definitions()
