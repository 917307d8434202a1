"""The Dagster side: one folder per domain, loaded by `quadra_pipeline.definitions`.

Assets wire the pure packages (model, data, store, registry) together; no model, SQL or
MLflow logic lives here.
"""
