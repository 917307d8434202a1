"""The drill of a point-in-time recovery of PostgreSQL: `quadra wal drill [--to TIME]`, and the
`pitr_drill` check that `base_backup_job` runs daily after each base backup.

Why: the WAL archive says what it could recover (`kept_range`); only a recovery shows that it
does. The drill performs the real one, on throwaway ground, and leaves the archive untouched:

1. `prepare_recovery` unpacks the newest base backup that ended before TIME into a temporary data
   directory, with `restore_command` reading the archive where it is (`set_aside_stream=False`:
   the live receiver's folder stays put).
2. A throwaway `postgres` (the server binaries of the archive's major version) starts on it:
   listening on no TCP address, only on a socket in the temporary folder (mode 0700), with a
   `pg_hba.conf` of its own (the source's may ask for passwords the drill does not hold),
   archiving off (its new timeline goes nowhere), `recovery_target_action = pause` (it stays read
   only at the target: `pg_last_xact_replay_timestamp()` is the time recovered to). The settings
   a standby must not have below its primary are taken from the base backup's control file.
3. When recovery is paused at TIME (or, without TIME, has replayed everything and opened):
   every database answers and has its tables (`pitr_drill.EXPECTED_TABLES` for the project's,
   MLflow's and Dagster's databases), and the champion the recovered MLflow database names is
   fetched from MLflow's artifact store (a folder, or `QUADRA_MLFLOW_ARTIFACTS_STORE` through
   `objectstore.py`) and passes the hourly drill's own check (`champion.py`).
4. The server is stopped and the temporary folder removed, whatever happened.

PostgreSQL ends a recovery whose target lies after the last transaction in the archive with
"recovery ended before configured recovery target was reached": nothing was committed between
the newest archived transaction and TIME, so that newest state *is* the state at TIME. The drill
then recovers again to the end of the archived WAL and says so (TIME itself stays within the
kept range: `prepare_recovery` refuses a TIME later than what the archive holds).

PostgreSQL refuses to run as root. Run as root (a host's shell), the drill runs the server as the
owner of the archive's WAL folder: the user the receiver writes as, who can read every segment
`restore_command` copies; an archive owned by root is refused with one line.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pitr_drill import EXPECTED_TABLES, PitrDrillReport, check_champion
from .wal import WAL_DIR, WalArchiveError, kept_range, prepare_recovery, reaches_the_end

#: What a hot standby needs at least as high as its primary had (pg_controldata's names).
_CONTROL_SETTINGS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}
_ENDED_EARLY = "recovery ended before configured recovery target was reached"
#: Where PostgreSQL's server binaries are, besides `pg_config --bindir` (Debian, RHEL, source builds).
_BINDIRS = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin", "/usr/local/pgsql/bin")


class WalDrillError(WalArchiveError):
    """The drill cannot run here (no server binaries, root with an archive only root reads)."""


class _EndedBeforeTarget(Exception):
    """Nothing after the target was in the archive: recover to its end instead."""


# The server binaries ----------------------------------------------------------------------------


def _server_major(postgres: Path) -> str | None:
    try:
        done = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    return match.group(1) if match else None


def _candidates(major: str | None) -> list[str]:
    found: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            found.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30,
                                        check=False).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for pattern in _BINDIRS:
        if major is not None:
            found.append(pattern.format(major=major))
        else:
            found += sorted((str(p) for p in Path("/").glob(pattern.format(major="*").lstrip("/"))), reverse=True)
    return list(dict.fromkeys(filter(None, found)))


def server_bindir(major: str | None = None) -> Path:
    """The folder of the PostgreSQL server binaries (`postgres`, `pg_controldata`) of `major`
    (None: any): `pg_config --bindir` when it has them, else the usual package locations.
    `WalDrillError` naming what to install otherwise (postgresql-client-15 has no server)."""
    candidates = _candidates(major)
    for folder in candidates:
        postgres = Path(folder) / "postgres"
        if os.access(postgres, os.X_OK) and (Path(folder) / "pg_controldata").exists() \
                and (major is None or _server_major(postgres) == major):
            return Path(folder)
    wanted = f"PostgreSQL {major} server" if major else "PostgreSQL server"
    raise WalDrillError(f"the drill needs the {wanted} binaries (postgres, pg_controldata), found in none of "
                        f"{', '.join(candidates) or 'the usual places'} (Debian: apt-get install postgresql-{major or 15})")


def _server_user(root: Path) -> tuple[int, int] | None:
    """Who runs the throwaway server: this process's user, or under root the archive's owner."""
    if os.geteuid() != 0:
        return None
    folder = root / WAL_DIR if (root / WAL_DIR).is_dir() else root
    owner = folder.stat()
    if owner.st_uid == 0:
        raise WalDrillError(f"running as root, and {folder} belongs to root: PostgreSQL refuses to run as root, and no other "
                            "user can be trusted to read the archive; run the drill as the archive's owner (the user "
                            "pg_receivewal writes as)")
    return owner.st_uid, owner.st_gid


# The throwaway server ---------------------------------------------------------------------------


class ScratchServer:
    """A `postgres` on a recovered data directory, reachable only through a socket in `folder`."""

    def __init__(self, bindir: Path, pgdata: Path, folder: Path, user: tuple[int, int] | None) -> None:
        self.bindir, self.pgdata, self.folder, self.user = bindir, pgdata, folder, user
        self.log_path = folder / "postgres.log"
        self.process: subprocess.Popen | None = None
        with socket.socket() as probe:  # a free number; with no TCP address it only names the socket
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def _control_settings(self) -> dict[str, str]:
        done = subprocess.run([str(self.bindir / "pg_controldata"), "-D", str(self.pgdata)], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "LC_ALL": "C"}, **self._as_user())
        found = {}
        for line in done.stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in _CONTROL_SETTINGS and value.strip().isdigit():
                found[_CONTROL_SETTINGS[key.strip()]] = value.strip()
        return found

    def _as_user(self) -> dict[str, Any]:
        return {} if self.user is None else {"user": self.user[0], "group": self.user[1], "extra_groups": []}

    def start(self) -> None:
        hba = self.folder / "pg_hba.conf"
        hba.write_text("# the drill's own: its socket is in a folder only the server's user can enter\n"
                       "local all all trust\n")
        (self.folder / "pg_ident.conf").write_text("")
        if not (self.pgdata / "postgresql.conf").exists():  # a packaged server keeps it in /etc
            (self.pgdata / "postgresql.conf").write_text("")
        if self.user is not None:
            for path in [self.folder, *self.folder.rglob("*")]:
                os.lchown(path, *self.user)
        settings = {
            **self._control_settings(),
            "listen_addresses": "", "port": str(self.port), "unix_socket_directories": str(self.folder),
            "unix_socket_permissions": "0700", "hba_file": str(hba), "ident_file": str(self.folder / "pg_ident.conf"),
            "archive_mode": "off", "hot_standby": "on", "recovery_target_action": "pause",
            "logging_collector": "off", "log_destination": "stderr", "lc_messages": "C", "ssl": "off",
            "shared_preload_libraries": "", "shared_buffers": "128MB", "cluster_name": "quadra-wal-drill",
        }
        # If the drill itself is killed outright, the server goes too (SIGQUIT: immediate shutdown).
        setpriv = shutil.which("setpriv")
        argv = [setpriv, "--pdeathsig", "SIGQUIT"] if setpriv else []
        argv += [str(self.bindir / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, "LC_ALL": "C"}, **self._as_user())

    def url(self, database: str, user: str) -> Any:
        import sqlalchemy as sa

        return sa.URL.create("postgresql+psycopg2", username=user, database=database,
                             query={"host": str(self.folder), "port": str(self.port)})

    def engine(self, database: str, user: str) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(self.url(database, user), poolclass=sa.pool.NullPool,
                                connect_args={"connect_timeout": 10, "application_name": "quadra-wal-drill"})

    def log_line(self) -> str:
        """The line of the server's log that says what went wrong (its last FATAL/PANIC/ERROR)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no server log"
        serious = [line for line in lines if re.search(r"\b(FATAL|PANIC|ERROR):", line)]
        chosen = (serious or lines or ["the server wrote nothing"])[-1]
        return re.sub(r"^\S+ \S+ \S+ \[\d+\] ", "", chosen).strip()[:300]

    def wait_recovered(self, users: list[str], timeout: float) -> tuple[str, str]:
        """Until recovery is paused at its target or, without one, the server has opened.
        Returns (how: "paused" or "opened", the superuser to connect as). `_EndedBeforeTarget`,
        or `WalDrillError` with the server's own words."""
        import sqlalchemy as sa

        deadline = time.monotonic() + timeout
        superuser: str | None = None
        while True:
            if self.process is not None and self.process.poll() is not None:
                if _ENDED_EARLY in self.log_path.read_text(errors="replace"):
                    raise _EndedBeforeTarget()
                raise WalDrillError(f"the recovering server stopped (exit {self.process.returncode}): {self.log_line()}")
            if time.monotonic() > deadline:
                raise WalDrillError(f"recovery did not finish within {timeout:g} s: {self.log_line()}")
            try:
                superuser = superuser or self._superuser(users)
                connection = self.engine("template1", superuser).connect()
            except sa.exc.OperationalError:  # starting up, not yet consistent
                time.sleep(0.2)
                continue
            with connection:  # (a query that fails here is a failed drill, not a wait)
                recovering, state = connection.execute(sa.text(
                    "select pg_is_in_recovery(), "
                    "case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() end")).one()
            if not recovering:
                return "opened", superuser
            if state == "paused":
                log = self.log_path.read_text(errors="replace")
                if "insufficient parameter settings" in log:
                    raise WalDrillError(f"recovery paused, not at its target: {self.log_line()}")
                return "paused", superuser
            time.sleep(0.2)

    def _superuser(self, users: list[str]) -> str:
        """The bootstrap superuser's name (role 10), asked as any role that exists (trust)."""
        import sqlalchemy as sa

        last: Exception | None = None
        for user in dict.fromkeys(filter(None, users)):
            try:
                with self.engine("template1", user).connect() as connection:
                    return str(connection.execute(sa.text("select rolname from pg_roles where oid = 10")).scalar_one())
            except sa.exc.OperationalError as exc:
                if "does not exist" not in str(exc):
                    raise
                last = exc
        raise WalDrillError(f"none of the roles {', '.join(users)} exists in the recovered cluster ({last})")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL of its process group."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig) if sig == signal.SIGKILL else self.process.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


# The drill -------------------------------------------------------------------------------------


def _database_name(url: str | None) -> str | None:
    if not url or not url.startswith("postgresql"):
        return None
    import sqlalchemy as sa

    return sa.make_url(url).database


def _user_name(url: str | None) -> str | None:
    if not url or not url.startswith("postgresql"):
        return None
    import sqlalchemy as sa

    return sa.make_url(url).username


def expected_databases(settings: Any) -> dict[str, str]:
    """{database name: role} that the recovered cluster must hold: the project's (DATABASE_URL),
    MLflow's (its backend store) and Dagster's (DAGSTER_PG_DB, `dagster` in the stack)."""
    found = {}
    mlflow = settings.mlflow_backend_uri or settings.mlflow_tracking_uri
    for role, url in (("project", settings.database_url), ("mlflow", mlflow)):
        name = _database_name(url)
        if name:
            found[name] = role
    found[os.environ.get("DAGSTER_PG_DB") or "dagster"] = "dagster"
    return found


def wal_drill(settings: Any, target: dt.datetime | None = None, *, timeout: float | None = None,
              log: Callable[[str], None] = print) -> PitrDrillReport:
    """Recover the archive (QUADRA_WAL_ARCHIVE) to `target` (None: as far as the WAL goes) on a
    throwaway server, check it, throw it away. `WalArchiveError` when nothing can be tried (no
    archive, a target outside the kept range, no server binaries); every other problem is a
    failed check of the report."""
    started = time.perf_counter()
    root = settings.wal_archive
    if root is None or not Path(root).is_dir():
        raise WalDrillError(f"QUADRA_WAL_ARCHIVE={root or ''} is not a folder: nothing to drill (continuous archiving "
                            "is not configured here)")
    root = Path(root)
    timeout = float(timeout or settings.backup_dump_timeout)
    server_bindir()  # none at all: refused before anything is unpacked
    user = _server_user(root)
    report = PitrDrillReport("postgresql", target, log=log)
    scratch = Path(tempfile.mkdtemp(prefix="quadra-wal-drill-"))
    server: ScratchServer | None = None
    stage = "base backup"
    try:
        pgdata = scratch / "pgdata"
        if target is not None and reaches_the_end(kept_range(root), target):
            report.note(f"{target.isoformat(timespec='milliseconds')} is the archive's newest write: recovering to the end of "
                        "the archived WAL instead (the same state)")
        chosen = prepare_recovery(root, pgdata, target=target, archive_mount=str(root), set_aside_stream=False)
        bindir = server_bindir((pgdata / "PG_VERSION").read_text().strip())
        report.check(stage, True, f"{chosen.name} (ended {chosen.ended.isoformat(timespec='seconds')}) unpacked into a "
                                  "scratch data directory")
        stage = "recovery"
        users = ["postgres", _user_name(settings.database_url), _user_name(settings.mlflow_backend_uri),
                 _user_name(settings.wal_url), _current_user(user)]
        recovering = time.perf_counter()
        try:
            server = ScratchServer(bindir, pgdata, scratch, user)
            server.start()
            how, superuser = server.wait_recovered(users, timeout)
        except _EndedBeforeTarget:
            report.note(f"nothing committed after {target.isoformat(timespec='seconds') if target else 'it'} is in the archive: "
                        "recovering to the end of the archived WAL instead (the same state)")
            server.stop()
            shutil.rmtree(pgdata)
            chosen = prepare_recovery(root, pgdata, target=None, archive_mount=str(root), set_aside_stream=False)
            server = ScratchServer(bindir, pgdata, scratch, user)
            server.start()
            how, superuser = server.wait_recovered(users, timeout)
        _recovered(report, server, superuser, how, time.perf_counter() - recovering, chosen.ended)
        stage = "databases"
        registry = _check_databases(report, server, superuser, expected_databases(settings))
        if registry is None:
            report.check("champion", False, "MLflow's database is not in the recovered cluster: no registry to check")
        else:
            check_champion(report, settings, registry, lambda champion: _fetch_champion(settings, champion, scratch / "champion"))
    except WalDrillError as exc:
        report.check(stage, False, str(exc))
    except WalArchiveError:
        raise  # a target outside the kept range: refused, nothing was tried
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        report.check(stage, False, f"{type(exc).__name__}: {exc}" if stage != "base backup" else f"cannot unpack it: {exc}")
    except Exception as exc:  # noqa: BLE001 - a database error in the checks: a failed drill, said
        report.check(stage, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = time.perf_counter() - started
    return report


def _current_user(user: tuple[int, int] | None) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(user[0] if user else os.geteuid()).pw_name
    except KeyError:
        return None


def _recovered(report: PitrDrillReport, server: ScratchServer, superuser: str, how: str, seconds: float,
               base_ended: dt.datetime) -> None:
    """Record what the recovery reached: the last transaction it replayed (none after the base
    backup: the base backup's end is the state)."""
    import sqlalchemy as sa

    with server.engine("template1", superuser).connect() as connection:
        last = connection.execute(sa.text("select pg_last_xact_replay_timestamp()")).scalar()
    report.recovered_to = last or base_ended
    reached = (f"last transaction replayed {last.astimezone(dt.UTC).isoformat(timespec='milliseconds')}" if last
               else f"no transaction after the base backup's end ({base_ended.isoformat(timespec='seconds')}) to replay")
    where = "paused at the target" if how == "paused" else "replayed every archived WAL record and opened"
    report.details["recovery_seconds"] = round(seconds, 2)
    report.check("recovery", True, f"{where}; {reached} ({seconds:.1f} s)")


def _check_databases(report: PitrDrillReport, server: ScratchServer, superuser: str, expected: dict[str, str]) -> Any:
    """Every database of the recovered cluster answers; the expected ones exist and have their
    tables. Returns a query on MLflow's database (None: not there)."""
    import sqlalchemy as sa

    with server.engine("template1", superuser).connect() as connection:
        names = [r[0] for r in connection.execute(sa.text(
            "select datname from pg_database where not datistemplate and datallowconn order by datname"))]
    for name in sorted(set(expected) - set(names)):
        report.check(f"database {name}", False, f"not in the recovered cluster (the {expected[name]} database)")
    registry = None
    for name in names:
        try:
            with server.engine(name, superuser).connect() as connection:
                rows = connection.execute(sa.text(
                    "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE' "
                    "and table_schema not in ('pg_catalog', 'information_schema')")).all()
                counts = {(t if s == "public" else f"{s}.{t}"): connection.execute(sa.text(f'select count(*) from "{s}"."{t}"')).scalar_one()
                          for s, t in rows}
        except sa.exc.SQLAlchemyError as exc:
            report.check(f"database {name}", False, f"does not answer ({str(exc).splitlines()[0][:200]})")
            continue
        report.details[f"database {name}"] = {"tables": len(counts), "rows": sum(counts.values()), "table_rows": counts}
        role = expected.get(name)
        missing = sorted(EXPECTED_TABLES[role] - set(counts)) if role else []
        if missing:
            report.check(f"database {name}", False, f"answers, but tables missing: {', '.join(missing)}")
            continue
        report.check(f"database {name}", True, f"answers; {len(counts)} tables, {sum(counts.values())} rows"
                                               + (f" (the {role} database)" if role else ""))
        if role == "mlflow":
            registry = _query(server, name, superuser)
    return registry


def _query(server: ScratchServer, database: str, user: str) -> Callable[..., list[tuple]]:
    import sqlalchemy as sa

    def query(sql: str, **params: Any) -> list[tuple]:
        with server.engine(database, user).connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql), params)]

    return query


def _fetch_champion(settings: Any, champion: Any, into: Path) -> Path:
    """The champion's files from MLflow's artifact store: QUADRA_MLFLOW_ARTIFACTS_STORE (S3 in the
    stack: fetched into the scratch folder), else the local artifact root (checked in place, read
    only). Artifacts are written once, never changed, so the store holds the files of the
    version the recovered registry names as they were when it was registered."""
    from ..objectstore import ObjectStoreError, open_object_store
    from .champion import ChampionProblem, artifact_path

    inside = artifact_path(settings.mlflow_artifact_root, champion.storage_location)
    store_url = settings.mlflow_artifacts_store
    if inside is None and store_url and champion.storage_location.startswith(store_url.rstrip("/") + "/"):
        inside = champion.storage_location[len(store_url.rstrip("/")) + 1:].strip("/")
    if inside is None:
        raise ChampionProblem(f"{champion.label}: its files ({champion.storage_location}) are in no artifact store the "
                              "drill knows (MLflow's artifact root, QUADRA_MLFLOW_ARTIFACTS_STORE)")
    if not store_url:
        folder = settings.mlflow_artifact_root / inside
        if not folder.is_dir():
            raise ChampionProblem(f"{champion.label}: its files ({folder}) are not in MLflow's artifact folder")
        return folder
    try:
        store = open_object_store(store_url)
        keys = list(store.keys(inside))
        if not keys:
            raise ChampionProblem(f"{champion.label}: its files ({store_url.rstrip('/')}/{inside}/) are not in MLflow's artifact store")
        for key in keys:
            store.get_file(key, into / key)
    except ObjectStoreError as exc:
        raise ChampionProblem(f"{champion.label}: cannot fetch its files from {store_url} ({exc})") from None
    return into / inside


__all__ = ["ScratchServer", "WalDrillError", "expected_databases", "server_bindir", "wal_drill"]
