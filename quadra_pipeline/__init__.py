"""quadra-pipeline: training, registry and backups for the Quadra Matrix model, on Dagster."""

__version__ = "0.1.0"
