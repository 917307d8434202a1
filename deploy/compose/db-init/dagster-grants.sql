-- Read-only access to Dagster's storage for the metrics exporter, run by db-init in the `dagster`
-- database as the superuser: psql -v reader=quadra_monitor -v owner=dagster -f dagster-grants.sql.
-- Dagster makes its tables itself when its first process starts (after db-init, on a new stack),
-- and `dagster instance migrate` may add some: the default privileges cover those, the GRANT
-- the tables that exist already (an upgraded stack).
\set ON_ERROR_STOP on
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
