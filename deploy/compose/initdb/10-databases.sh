#!/bin/sh
# First start of the stack's PostgreSQL (the official image runs /docker-entrypoint-initdb.d):
# one role and one database each for Dagster's storage, the project and MLflow. The project's
# and MLflow's roles may create databases: the restore drill restores into scratch databases,
# and an in-place restore restores into new ones and renames them over the live ones. The
# passwords come from the environment: psql reads them itself (\getenv) and quotes them as
# literals (:'name'), so they are never on a command line nor spliced into SQL by the shell.
set -eu
: "${DAGSTER_DB_PASSWORD:?}" "${QUADRA_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres --quiet <<'SQL'
\getenv dagster_password DAGSTER_DB_PASSWORD
\getenv quadra_password QUADRA_DB_PASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE ROLE quadra LOGIN CREATEDB PASSWORD :'quadra_password';
CREATE ROLE mlflow LOGIN CREATEDB PASSWORD :'mlflow_password';
CREATE DATABASE dagster OWNER dagster;
CREATE DATABASE quadra OWNER quadra;
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE dagster, quadra, mlflow FROM PUBLIC;
SQL
