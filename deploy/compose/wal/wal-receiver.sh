#!/bin/sh
# The stack's `wal` service: PostgreSQL's write-ahead log streamed, as it is written, into the
# archive on another host's volume (/wal-archive/wal), by PostgreSQL's own pg_receivewal through
# a replication slot (the server keeps what the receiver has not had yet). --synchronous flushes
# each record as it arrives: the recovery point is what the server has flushed, a second or less
# behind. Its password: a libpq passfile (a secret file). Base backups go to the same archive
# (backup/wal.py, base_backup_job); quadra_pipeline/backup/wal.py tells what can be recovered.
set -eu
[ -s /run/secrets/wal.pgpass ] || { echo "wal: the secret file /run/secrets/wal.pgpass is missing or empty (make deploy-secrets)" >&2; exit 1; }
export PGPASSFILE=/run/secrets/wal.pgpass PGHOST="${PGHOST:-postgres}" PGUSER=quadra_wal
mkdir -p /wal-archive/wal
until pg_isready -q; do sleep 1; done
pg_receivewal --slot=quadra_wal --create-slot --if-not-exists --no-password
echo "wal: streaming into /wal-archive/wal (slot quadra_wal)"
exec pg_receivewal -D /wal-archive/wal --slot=quadra_wal --synchronous --no-password --status-interval=1
