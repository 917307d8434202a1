#!/bin/sh
# The MLflow tracking server of the stack: authentication on (MLflow's basic-auth app), artifacts
# in the object store (served through this server: clients never hold S3 credentials), and the
# pipeline's own users made once it answers (quadra_pipeline/registry/access.py).
#
# Every secret is a file under /run/secrets (Compose secrets): the database owner's URL, the
# admin password, the Flask secret key, the pipeline's and the reader's passwords, the S3
# credentials. MLflow reads some settings only from its environment or an ini file: they are
# set here, for the server process alone (never in the container's configuration, never on a
# command line), and the auth ini goes into a private tmpfs. The admin password exists only in
# this container. The health check passes once the users are made (/run/quadra/ready).
#
# MLflow's own request metrics: the server writes them (--expose-prometheus) into a private
# folder, and `quadra exporter --multiprocess-dir` serves them on :9465 for Prometheus without
# MLflow's authentication (MLflow 3.17 shows /metrics to its admin alone; Prometheus holds no
# password). Either process ending ends the container.
set -eu
for name in backend_store_uri admin_password flask_secret_key pipeline_password reader_password aws_credentials; do
  [ -s "/run/secrets/$name" ] || { echo "mlflow: the secret file /run/secrets/$name is missing or empty (make deploy-secrets)" >&2; exit 1; }
done
: "${QUADRA_MLFLOW_ARTIFACTS_DESTINATION:?set it to the S3 URL of MLflow\'s artifacts}"
umask 077
rm -f /run/quadra/ready
metrics=/run/quadra/prometheus
rm -rf "$metrics" && mkdir -p "$metrics"
export MLFLOW_AUTH_CONFIG_PATH=/run/quadra/basic_auth.ini AWS_SHARED_CREDENTIALS_FILE=/run/secrets/aws_credentials
# configparser reads "%" as interpolation: a percent-encoded password needs "%%".
database_uri="$(sed 's/%/%%/g' /run/secrets/backend_store_uri)"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${database_uri}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A checked password is remembered for a minute (each request would otherwise cost a PBKDF2 hash:
# registering a model is a hundred requests); a changed password counts within that minute.
auth_cache_ttl_seconds = 60
INI
MLFLOW_BACKEND_STORE_URI="$(cat /run/secrets/backend_store_uri)" \
MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat /run/secrets/flask_secret_key)" \
MLFLOW_AUTH_ADMIN_PASSWORD="$(cat /run/secrets/admin_password)" \
  mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-2}" \
    --serve-artifacts --artifacts-destination "$QUADRA_MLFLOW_ARTIFACTS_DESTINATION" --expose-prometheus "$metrics" &
server=$!
quadra exporter --multiprocess-dir "$metrics" --host 0.0.0.0 --port 9465 &
exporter=$!
stopping=0
trap 'stopping=1; kill -TERM "$server" "$exporter" 2>/dev/null' TERM INT
until python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=3)" 2>/dev/null; do
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit 1; }
  kill -0 "$exporter" 2>/dev/null || { echo "mlflow: the metrics exporter (:9465) stopped" >&2; kill -TERM "$server"; exit 1; }
  sleep 1
done
MLFLOW_TRACKING_URI="${QUADRA_MLFLOW_SELF_URL:-http://mlflow:5000}" MLFLOW_TRACKING_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
MLFLOW_TRACKING_PASSWORD="$(cat /run/secrets/admin_password)" \
QUADRA_MLFLOW_PIPELINE_PASSWORD_FILE=/run/secrets/pipeline_password QUADRA_MLFLOW_READER_PASSWORD_FILE=/run/secrets/reader_password \
  python3 -m quadra_pipeline.registry.access
touch /run/quadra/ready
# Whichever ends first (the other is stopped): `wait -n` is not POSIX, so poll the two.
while kill -0 "$server" 2>/dev/null && kill -0 "$exporter" 2>/dev/null; do sleep 2; done
ended="the server"; kill -0 "$server" 2>/dev/null && ended="the metrics exporter"
kill -TERM "$server" "$exporter" 2>/dev/null || true
wait "$server" 2>/dev/null || true
[ "$stopping" = 1 ] && exit 0
echo "mlflow: $ended stopped" >&2
exit 1
