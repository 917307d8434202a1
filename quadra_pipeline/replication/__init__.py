"""Continuous replication of the embedded default's SQLite databases with Litestream, its lag,
and point-in-time restore (no Dagster here).

    litestream.prepare(settings)           # WAL mode, the configuration file
    lag.measure_lags(settings)             # seconds behind, per database (the replication check)
    pitr.restore_to(settings, when, dir)   # every database at `when`, and the artifacts it names

`make dev` starts `litestream replicate` beside `dagster dev` when QUADRA_REPLICA is set
(`quadra replication run --exec ...`); `make run` never does. docs/REPLICATION.md has the rest.
"""

from .litestream import ReplicationError

__all__ = ["ReplicationError"]
