#!/bin/sh
# Part of `make deploy-secrets`: each identity folder of the secrets (deploy/secrets/<identity>/)
# belongs to the user its container runs as, so the files can stay mode 600 and still be read by
# that one non-root process: 10001 for the stack's own image, and the uid that the PostgreSQL,
# RabbitMQ, SeaweedFS and Alertmanager images run as (asked of each image, so the official images and the
# stand-ins both work). As root, chown; otherwise through Docker itself (access to Docker is
# root-equivalent anyway): the files then belong to those uids, read them with sudo.
# Usage: own-secrets.sh DIR   (QUADRA_POSTGRES_IMAGE, QUADRA_BROKER_IMAGE, QUADRA_OBJECTS_IMAGE,
# QUADRA_ALERTMANAGER_IMAGE)
set -eu
dir="$(cd "$1" && pwd)"
postgres_image="${QUADRA_POSTGRES_IMAGE:-postgres:15-bookworm}"
broker_image="${QUADRA_BROKER_IMAGE:-rabbitmq:4.2}"
objects_image="${QUADRA_OBJECTS_IMAGE:-chrislusf/seaweedfs:4.48}"
alertmanager_image="${QUADRA_ALERTMANAGER_IMAGE:-prom/alertmanager:v0.27.0}"
helper_image="${QUADRA_HELPER_IMAGE:-debian:bookworm-slim}"

user_of() {  # IMAGE [USER] -> uid:gid
  uid="$(docker run --rm --network none --entrypoint id "$1" -u ${2:+"$2"} 2>/dev/null)" \
    && gid="$(docker run --rm --network none --entrypoint id "$1" -g ${2:+"$2"} 2>/dev/null)" && [ -n "$uid" ] \
    || { echo "deploy-secrets: cannot ask image $1 which user it runs as (docker run $1 id): is it there? (make standins)" >&2; return 1; }
  echo "$uid:$gid"
}

own() {  # OWNER FOLDER...
  owner="$1"; shift
  for folder in "$@"; do
    [ -d "$dir/$folder" ] || continue
    if [ "$(id -u)" = 0 ]; then
      chown -R "$owner" "$dir/$folder"
    else
      docker run --rm --network none --user 0 -v "$dir/$folder:/s" --entrypoint chown "$helper_image" -R "$owner" /s
    fi
  done
}

postgres_owner="$(user_of "$postgres_image" postgres)"
broker_owner="$(user_of "$broker_image" rabbitmq)"
objects_owner="$(user_of "$objects_image" seaweed)"  # it starts as root, then runs as seaweed
own "$postgres_owner" postgres
own "$broker_owner" broker
own "$objects_owner" objects
own "$(user_of "$alertmanager_image")" alertmanager  # nobody, in the official image
own 10001:10001 db-init mlflow webserver daemon code training backup wal exporter serving public
echo "deploy-secrets: each identity's files belong to the user its container runs as (mode 600)"
