"""Monitoring: what Dagster OSS and MLflow do not export, for Prometheus, and the alerts that reach a person.

- `exporter`: `quadra exporter`'s collector: metrics computed at each scrape from the Dagster
  instance, the project's SQL store (read-only), the backup repository and its volume, and the
  MLflow registry; a source that fails is `quadra_source_up{source=...} 0`, never a failed scrape.
- `sources`: one reader per source, and what a "good" backup is.
- `server`: the HTTP side (`/metrics`, `/health`), and the mode that serves the metrics MLflow's
  own workers write (`mlflow server --expose-prometheus DIR`) without MLflow's authentication.
- `notify`: a failed run as JSON to a webhook and as an e-mail (`QUADRA_ALERT_*`), bounded: used by
  Dagster's run-failure sensor (`quadra_pipeline/defs/runs/alerts.py`).

Prometheus's configuration, the recording and alerting rules and Alertmanager's configuration
live in `deploy/prometheus/`. No Dagster definitions here, no torch.
"""
