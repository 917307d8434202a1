"""What a Dagster instance of the deployment configures by class name in its dagster.yaml (the
Compose stack's run launcher), kept outside `defs/` so the code location never imports the
deployment's optional libraries."""
