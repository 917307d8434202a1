#!/bin/sh
# The stack's one-shot database setup (service `db-init`, before anything else uses PostgreSQL):
# roles and databases (roles.sql, as the superuser), the project's schema (`quadra db upgrade`,
# as its owner), then the grants on its tables (grants.sql). Runs on every `up`: a new stack,
# an upgraded one (the roles an older stack lacks are made) and a rotated password alike.
# The superuser's password reaches psql through a passfile made here in a private tmpfs.
set -eu
secret() { [ -s "/run/secrets/$1" ] || { echo "db-init: the secret file /run/secrets/$1 is missing or empty (make deploy-secrets)" >&2; exit 1; }; }
for name in postgres_password dagster_password quadra_password mlflow_password backup_password catalogue_password aliases_password wal_password monitor_password database_url; do
  secret "$name"
done
umask 077
export PGPASSFILE=/run/quadra/postgres.pgpass PGHOST="${PGHOST:-postgres}" PGUSER=postgres
printf '*:*:*:postgres:%s\n' "$(cat /run/secrets/postgres_password)" > "$PGPASSFILE"
psql --no-psqlrc --quiet --dbname postgres --file /opt/quadra/db-init/roles.sql
DATABASE_URL_FILE=/run/secrets/database_url quadra db upgrade
psql --no-psqlrc --quiet --dbname quadra --file /opt/quadra/db-init/grants.sql
psql --no-psqlrc --quiet --dbname dagster -v reader=quadra_monitor -v owner=dagster --file /opt/quadra/db-init/dagster-grants.sql
rm -f "$PGPASSFILE"
echo "db-init: roles, databases, schema and grants are in place"
