-- Table-level grants in the project's database, once its schema exists (db-init.sh runs
-- `quadra db upgrade` first). The catalogue role: the `backups` table; the alias sensor's role:
-- what recording an alias move made outside the pipeline reads and writes. Both read the
-- schema's revision (the application checks it is current before any query). The sensor keeps
-- the mirror's `aliases` (and `is_production`) in step with a move it records, and nothing else.
\set ON_ERROR_STOP on
GRANT USAGE ON SCHEMA public TO quadra_catalogue, quadra_aliases, quadra_monitor;
GRANT SELECT ON alembic_version TO quadra_catalogue, quadra_aliases, quadra_monitor;
GRANT SELECT, INSERT, UPDATE ON backups TO quadra_catalogue;
GRANT USAGE ON SEQUENCE backups_id_seq TO quadra_catalogue;
GRANT SELECT, UPDATE (aliases, is_production) ON model_versions TO quadra_aliases;
GRANT SELECT, INSERT ON model_alias_events TO quadra_aliases;
GRANT SELECT, INSERT, UPDATE ON alias_checks TO quadra_aliases;
GRANT USAGE ON SEQUENCE model_alias_events_id_seq TO quadra_aliases;
-- The metrics exporter: the training tables, read only.
GRANT SELECT ON training_runs, training_metrics TO quadra_monitor;
