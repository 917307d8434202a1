#!/bin/sh
# First start of the stack's PostgreSQL (the official image runs /docker-entrypoint-initdb.d):
# one role and one database each for Dagster's storage, the project and MLflow. The project's
# and MLflow's roles may create databases: the restore drill restores into scratch databases,
# and an in-place restore restores into new ones and renames them over the live ones. The
# passwords come from the environment and go to psql on its standard input, not its arguments.
set -eu
: "${DAGSTER_DB_PASSWORD:?}" "${QUADRA_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres --quiet <<SQL
CREATE ROLE dagster LOGIN PASSWORD '${DAGSTER_DB_PASSWORD}';
CREATE ROLE quadra LOGIN CREATEDB PASSWORD '${QUADRA_DB_PASSWORD}';
CREATE ROLE mlflow LOGIN CREATEDB PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE dagster OWNER dagster;
CREATE DATABASE quadra OWNER quadra;
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE dagster, quadra, mlflow FROM PUBLIC;
SQL
