#!/usr/bin/env bash
# The official image's entrypoint contract, in short: started as root, it gives the data
# directory to `rabbitmq` (uid 999) and runs the command as that user; a long container hostname
# switches the node to long names. The stand-in also makes the Erlang cookie before the first
# start and starts epmd as `rabbitmq` (the official image leaves both to the server), so a health
# check run early by root (`docker exec`, HOME=/var/lib/rabbitmq) can never make the cookie with
# the wrong owner, nor leave an epmd running as root.
set -euo pipefail
if [[ "${1:-}" == rabbitmq* ]] && [ "$(id -u)" = 0 ]; then
  if [ "$1" = rabbitmq-server ]; then
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
  fi
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi
if [ "${1:-}" = rabbitmq-server ] && [ ! -e "$HOME/.erlang.cookie" ]; then
  (umask 277 && openssl rand -hex 20 | tr a-f A-F | tr -d '\n' > "$HOME/.erlang.cookie")
fi
if [ "${1:-}" = rabbitmq-server ]; then
  epmd -daemon
fi
if [ -z "${RABBITMQ_USE_LONGNAME:-}" ] && [ "$(hostname)" != "$(hostname -s)" ]; then
  export RABBITMQ_USE_LONGNAME=true
fi
exec "$@"
