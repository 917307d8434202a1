-- The stack's databases and roles, made or brought up to date on every start by the one-shot
-- `db-init` service (deploy/compose/db-init/db-init.sh), as the superuser. Idempotent: a role
-- or database that exists is kept; passwords are set again (a rotated secret file takes effect).
-- Passwords are read by psql itself from the secret files (backquotes) and quoted as literals
-- (:'name'): never on a command line, never spliced into SQL by a shell.
\set ON_ERROR_STOP on
\set dagster_password `cat /run/secrets/dagster_password`
\set quadra_password `cat /run/secrets/quadra_password`
\set mlflow_password `cat /run/secrets/mlflow_password`
\set backup_password `cat /run/secrets/backup_password`
\set catalogue_password `cat /run/secrets/catalogue_password`
\set aliases_password `cat /run/secrets/aliases_password`
\set wal_password `cat /run/secrets/wal_password`
\set monitor_password `cat /run/secrets/monitor_password`

SELECT format('CREATE ROLE %I', name) FROM unnest(ARRAY['dagster', 'quadra', 'mlflow', 'quadra_backup',
  'quadra_catalogue', 'quadra_aliases', 'quadra_wal', 'quadra_monitor']) AS name WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec

-- Owners: Dagster's storage, the project's database, MLflow's database. The project's and
-- MLflow's may create databases: an in-place restore restores into new ones and renames them.
ALTER ROLE dagster WITH LOGIN NOCREATEDB PASSWORD :'dagster_password';
ALTER ROLE quadra WITH LOGIN CREATEDB PASSWORD :'quadra_password';
ALTER ROLE mlflow WITH LOGIN CREATEDB PASSWORD :'mlflow_password';
-- The hourly backup's dump role: reads everything pg_dump needs (pg_read_all_data), writes
-- nothing of the live databases; it may create the drill's scratch databases (its own).
ALTER ROLE quadra_backup WITH LOGIN CREATEDB PASSWORD :'backup_password';
GRANT pg_read_all_data TO quadra_backup;
-- The backup catalogue (the `backups` table) and the alias-history sensor: their tables only.
ALTER ROLE quadra_catalogue WITH LOGIN NOCREATEDB PASSWORD :'catalogue_password';
ALTER ROLE quadra_aliases WITH LOGIN NOCREATEDB PASSWORD :'aliases_password';
-- The code server's sensors read the server's statistics (the WAL receiver's lag) too.
GRANT pg_monitor TO quadra_aliases;
-- Continuous archiving: streams the WAL and takes base backups (a replication connection only:
-- it can read everything physically, change nothing).
ALTER ROLE quadra_wal WITH LOGIN REPLICATION NOCREATEDB PASSWORD :'wal_password';
-- The metrics exporter: reads Dagster's storage and the training tables, writes nothing
-- (grants.sql, dagster-grants.sql).
ALTER ROLE quadra_monitor WITH LOGIN NOCREATEDB PASSWORD :'monitor_password';

SELECT format('CREATE DATABASE %I OWNER %I', name, name) FROM unnest(ARRAY['dagster', 'quadra', 'mlflow']) AS name
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = name) \gexec
REVOKE ALL ON DATABASE dagster, quadra, mlflow FROM PUBLIC;
GRANT CONNECT ON DATABASE quadra, mlflow TO quadra_backup;
GRANT CONNECT ON DATABASE quadra TO quadra_catalogue, quadra_aliases, quadra_monitor;
GRANT CONNECT ON DATABASE dagster TO quadra_monitor;
