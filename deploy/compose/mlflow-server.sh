#!/bin/sh
# The MLflow tracking server of the stack, with authentication on (MLflow's basic-auth app).
# MLflow reads the auth store's URL only from an ini file: it is written here, from the
# environment, into a private tmpfs (mode 600), so no password is ever on a command line or in
# the image. The auth tables live in the MLflow database itself (their own alembic table), so
# the hourly backup of that database takes the users too. The admin user is created from
# MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD on the first start.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
umask 077
export MLFLOW_AUTH_CONFIG_PATH=/run/quadra/basic_auth.ini
# configparser reads "%" as interpolation: a percent-encoded password needs "%%".
database_uri="$(printf '%s' "$MLFLOW_BACKEND_STORE_URI" | sed 's/%/%%/g')"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${database_uri}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-2}" \
  --serve-artifacts --artifacts-destination /data/mlartifacts
