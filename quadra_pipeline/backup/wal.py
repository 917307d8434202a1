"""Continuous archiving of PostgreSQL: base backups and the streamed WAL, kept by the backup
retention, and a data directory prepared for point-in-time recovery (no Dagster here).

The hourly backup is a logical dump: it can bring the databases back to an hour. Seconds need
the server's write-ahead log. PostgreSQL's own tools do it, with nothing to install on its
server: `pg_receivewal` streams the WAL over a replication connection as it is written (the
stack's `wal` service, `--synchronous`: each record flushed as it arrives, through a
replication slot, so the server keeps what the receiver has not had), and `pg_basebackup`
takes the base backups a recovery starts from (`-X stream`: each holds the WAL it needs to be
consistent). pgBackRest 2.45 (Debian bookworm's) talks to S3 over HTTPS only and would run
beside the server's data directory; Barman's cloud tools would need installing into the
database image (`archive_command`); both are more machinery for the same result here.

The archive is a folder on another host (the stack: the `quadra-wal` volume):

    <root>/wal/                    the streamed segments; the one being written ends in .partial
    <root>/base/<YYYYmmddTHHMMSSZ>/
        base.tar.gz, pg_wal.tar.gz, backup_manifest   (pg_basebackup -Ft -z -X stream)
        info.json                  when it started and ended, its start segment and timeline

Retention follows the backups': base backups by the same plan (hourly for 7 days, then daily,
weekly, monthly), and the WAL from the oldest base backup of the last `continuous_days` (7) on:
any second of the last week can be recovered; before that, the moment each kept base backup
ended. Recovery (`prepare_recovery`) unpacks the newest base backup that ended before the
target into an empty data directory and sets `restore_command`, the target and `recovery.signal`:
PostgreSQL replays the archived WAL (the .partial segment included) up to the target and opens.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BackupError
from .retention import BackupInfo, RetentionPolicy, plan_retention

#: pg_receivewal's folder and the base backups' folder under the archive root.
WAL_DIR, BASE_DIR = "wal", "base"
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial)?$")
#: How many days of WAL are kept: any second of them can be recovered.
CONTINUOUS_DAYS = 7


class WalArchiveError(BackupError):
    """The WAL archive cannot do what was asked; one line saying why."""


@dataclass(frozen=True)
class BaseBackup:
    name: str
    started: dt.datetime
    ended: dt.datetime
    start_segment: str
    timeline: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started"], data["ended"] = self.started.isoformat(), self.ended.isoformat()
        return data


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _libpq_env(url: str) -> tuple[str, dict[str, str]]:
    from .postgres import libpq, parse

    conninfo, env = libpq(parse(url, "PostgreSQL server"))
    return conninfo, env


def take_base_backup(url: str, root: str | os.PathLike[str], *, timeout: float = 3600, now=_utc_now) -> BaseBackup:
    """A base backup of the whole server at `url` (a role with REPLICATION) into the archive."""
    from .postgres import run_tool, tool

    root = Path(root)
    (root / BASE_DIR).mkdir(parents=True, exist_ok=True)
    started = now()
    name = started.strftime("%Y%m%dT%H%M%SZ")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root / BASE_DIR))
    try:
        conninfo, env = _libpq_env(url)
        run_tool([tool("pg_basebackup", "a base backup"), f"--dbname={conninfo}", "-D", str(staging), "-Ft", "-z",
                  "-X", "stream", "-c", "fast", "--no-password", "--label", f"quadra {name}"],
                 env, "pg_basebackup", env.get("PGPASSWORD"), timeout=timeout)
        start_segment, timeline = _start_of(staging / "base.tar.gz")
        backup = BaseBackup(name, started, now(), start_segment, timeline,
                            sum(p.stat().st_size for p in staging.iterdir()))
        (staging / "info.json").write_text(json.dumps(backup.as_dict(), indent=2))
        os.replace(staging, root / BASE_DIR / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backup


def _start_of(base_tar: Path) -> tuple[str, int]:
    """The base backup's first WAL segment and timeline, from its `backup_label`."""
    with tarfile.open(base_tar) as tar:
        label = tar.extractfile("backup_label")
        text = label.read().decode() if label else ""
    match = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", text)
    timeline = re.search(r"START TIMELINE: (\d+)", text)
    if not match:
        raise WalArchiveError(f"{base_tar}: no START WAL LOCATION in its backup_label")
    return match.group(1), int(timeline.group(1)) if timeline else int(match.group(1)[:8], 16)


def base_backups(root: str | os.PathLike[str]) -> list[BaseBackup]:
    """The archive's complete base backups, oldest first."""
    folder = Path(root) / BASE_DIR
    found = []
    for info in sorted(folder.glob("*/info.json")) if folder.is_dir() else []:
        data = json.loads(info.read_text())
        data["started"], data["ended"] = dt.datetime.fromisoformat(data["started"]), dt.datetime.fromisoformat(data["ended"])
        found.append(BaseBackup(**data))
    return found


def stream_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The receiver's folder and those of earlier streams (`wal-<time>`: set aside by a recovery,
    when the server started a new timeline and the receiver a new folder), oldest first."""
    root = Path(root)
    earlier = sorted(p for p in root.glob(f"{WAL_DIR}-*") if p.is_dir())
    return [*earlier, *([root / WAL_DIR] if (root / WAL_DIR).is_dir() else [])]


def segments(root: str | os.PathLike[str]) -> list[Path]:
    """Every archived segment, of every stream."""
    return sorted((p for folder in stream_dirs(root) for p in folder.iterdir() if _SEGMENT.match(p.name)),
                  key=lambda p: (p.name.split(".")[0][8:], p.name))


def newest_wal_time(root: str | os.PathLike[str]) -> dt.datetime | None:
    """When the newest WAL reached the archive (the last write of its newest segment)."""
    found = segments(root)
    if not found:
        return None
    return dt.datetime.fromtimestamp(max(p.stat().st_mtime for p in found), dt.timezone.utc)


@dataclass(frozen=True)
class KeptRange:
    """What can be recovered: any moment in [continuous_from, continuous_to], and the end of
    each older base backup."""

    continuous_from: dt.datetime | None
    continuous_to: dt.datetime | None
    points: list[dt.datetime]

    def describe(self) -> str:
        if self.continuous_from is None:
            return "nothing (no base backup with the WAL after it)"
        text = f"any moment from {self.continuous_from.isoformat(timespec='seconds')} to {self.continuous_to.isoformat(timespec='seconds')}"
        if self.points:
            text += f", and {len(self.points)} earlier point(s): " + ", ".join(p.isoformat(timespec="seconds") for p in self.points[:5])
        return text


def kept_range(root: str | os.PathLike[str]) -> KeptRange:
    backups = base_backups(root)
    wal = {p.name.split(".")[0] for p in segments(root)}
    continuous = [b for b in backups if b.start_segment in wal or _after_all(b.start_segment, wal)]
    newest = newest_wal_time(root)
    if not continuous or newest is None:
        return KeptRange(None, None, [b.ended for b in backups])
    first = continuous[0]
    return KeptRange(first.ended, max(newest, continuous[-1].ended), [b.ended for b in backups if b.ended < first.ended])


def reaches_the_end(kept: KeptRange, target: dt.datetime | None) -> bool:
    """A target at the archive's newest write (`continuous_to`, what `quadra wal status` shows)
    asks for everything the archive holds: recovered as far as the WAL goes. Recovering *to* that
    instant instead could stop short of the last commit: the file's modification time comes from
    the kernel's coarse clock, which may read a tick (up to 10 ms) before the commit it records."""
    return target is None or (kept.continuous_to is not None and target >= kept.continuous_to)


def _after_all(segment: str, wal: set[str]) -> bool:
    """A base backup newer than every archived segment (nothing streamed since): still continuous."""
    return bool(wal) and all(segment >= name for name in wal)


def prune(root: str | os.PathLike[str], *, now=_utc_now, policy: RetentionPolicy | None = None,
          continuous_days: int = CONTINUOUS_DAYS) -> dict[str, list[str]]:
    """Base backups the retention plan does not keep, and WAL segments older than the first
    base backup of the last `continuous_days` (never the newest base backup's)."""
    root = Path(root)
    backups = base_backups(root)
    if not backups:
        return {"base_backups": [], "segments": []}
    infos = [BackupInfo(b.name, b.ended, True) for b in backups]
    plan = plan_retention(infos, now(), policy or RetentionPolicy())
    keep = set(plan.keep) | {backups[-1].name}
    removed = []
    for backup in backups:
        if backup.name not in keep:
            shutil.rmtree(root / BASE_DIR / backup.name)
            removed.append(backup.name)
    window = now() - dt.timedelta(days=continuous_days)
    anchors = [b for b in backups if b.name in keep and b.ended >= window] or [backups[-1]]
    oldest_needed = anchors[0].start_segment
    gone = []
    for path in segments(root):
        if path.name.split(".")[0][8:] < oldest_needed[8:] and not path.name.endswith(".partial"):
            path.unlink()
            gone.append(path.name)
    return {"base_backups": removed, "segments": gone}


def check_target(kept: KeptRange, target: dt.datetime) -> dt.datetime:
    """`target` if the archive can recover to it, or the base backup's end it names (an older
    point, as `quadra wal status` prints it: to the second); `WalArchiveError` naming the kept
    range otherwise. Checked before anything is touched (`make deploy-restore` asks first)."""
    target = target.astimezone(dt.timezone.utc)
    if kept.continuous_from is not None:
        if kept.continuous_from <= target <= kept.continuous_to:
            return target
        # The ends as `quadra wal status` prints them (to the second) are the ends.
        if kept.continuous_from - dt.timedelta(seconds=1) < target < kept.continuous_from:
            return kept.continuous_from
        if kept.continuous_to < target < kept.continuous_to + dt.timedelta(seconds=1):
            return kept.continuous_to
    for point in kept.points:
        if abs((point - target).total_seconds()) < 1:
            return point
    raise WalArchiveError(f"cannot recover to {target.isoformat(timespec='seconds')}: the archive keeps {kept.describe()}")


#: Where a recovery that cannot see the archive (the stack's server: it mounts no archive, and
#: its user cannot read the receiver's files) finds the WAL it replays: a folder of the new data
#: directory, relative, since PostgreSQL runs restore_command in the data directory. Under pg_wal,
#: whose contents no base backup takes, so a copy left behind never travels into one.
RECOVERY_WAL = "pg_wal/quadra-recovery-wal"
#: The settings a recovery writes into postgresql.auto.conf. PostgreSQL never removes them, so a
#: base backup of a recovered server carries them: each recovery drops the earlier ones first.
_RECOVERY_KEYS = ("restore_command", "recovery_target", "recovery_target_action", "recovery_target_timeline",
                  "recovery_target_time", "recovery_target_inclusive", "hot_standby")
_RECOVERY_HEADER = "# Point-in-time recovery (quadra_pipeline.backup.wal)"


def prepare_recovery(root: str | os.PathLike[str], pgdata: str | os.PathLike[str], *, target: dt.datetime | None = None,
                     archive_mount: str = "/wal-archive", set_aside_stream: bool = True,
                     copy_wal: bool = False) -> BaseBackup:
    """Unpack the newest base backup that ended before `target` (None: the newest; recovery then
    replays all the archived WAL) into the empty `pgdata`, with the settings PostgreSQL needs to
    recover from the archive mounted at `archive_mount`. Refuses a target outside the kept range.
    `set_aside_stream=False` (a drill, `wal_drill.py`) leaves the archive exactly as it was: the
    recovered server is thrown away, so the live receiver's folder stays where it is, and it may
    answer read-only queries while it recovers; a real recovery keeps the server closed until it
    has finished (`hot_standby = off`), so the services that wait for it (the stack's `db-init`,
    which writes) do not take a recovering server for a healthy one. `copy_wal=True` copies the
    WAL the recovery needs into `pgdata/RECOVERY_WAL` instead (delete it once the server is up:
    `make deploy-restore` does). An older point (a base backup's end) stops as soon as the backup
    is consistent (`recovery_target = 'immediate'`)."""
    root, pgdata = Path(root), Path(pgdata)
    kept = kept_range(root)
    point = False
    if target is not None:
        target = check_target(kept, target)
        point = target in kept.points  # an older base backup's end: recovered by replaying its own WAL
        if reaches_the_end(kept, target):
            target = None
    candidates = [b for b in base_backups(root) if target is None or b.ended <= target]
    if not candidates:
        raise WalArchiveError(f"no base backup in {root / BASE_DIR} ended before {target}: the archive keeps {kept.describe()}")
    chosen = candidates[-1]
    pgdata.mkdir(parents=True, exist_ok=True)
    if any(pgdata.iterdir()):
        raise WalArchiveError(f"{pgdata} is not empty: recovery starts from an empty data directory")
    folder = root / BASE_DIR / chosen.name
    try:
        with tarfile.open(folder / "base.tar.gz") as tar:
            _extract(tar, pgdata)
        (pgdata / "pg_wal").mkdir(exist_ok=True)
        with tarfile.open(folder / "pg_wal.tar.gz") as tar:
            _extract(tar, pgdata / "pg_wal")
    except BaseException:
        for item in pgdata.iterdir():  # it was empty: left empty, so the same command can run again
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        raise
    # The server recovers into a new timeline; the receiver starts a new folder for it, and the
    # stream so far is set aside (kept: it is what this recovery, and any later one, replays).
    if set_aside_stream:
        owner = (root / WAL_DIR).stat() if (root / WAL_DIR).is_dir() else root.stat()
        if (root / WAL_DIR).is_dir() and any((root / WAL_DIR).iterdir()):
            os.rename(root / WAL_DIR, root / f"{WAL_DIR}-{_utc_now().strftime('%Y%m%dT%H%M%SZ')}")
        (root / WAL_DIR).mkdir(exist_ok=True)
        if os.geteuid() == 0:  # run as root (make deploy-restore): the receiver's user writes the new folder
            os.chown(root / WAL_DIR, owner.st_uid, owner.st_gid)
            os.chmod(root / WAL_DIR, owner.st_mode & 0o7777)
    shutil.rmtree(pgdata / RECOVERY_WAL, ignore_errors=True)  # never another recovery's
    if copy_wal:
        archive_mount = RECOVERY_WAL
        _copy_wal(root, chosen, pgdata / RECOVERY_WAL, histories_only=point)
    settings = [
        "restore_command = '" + _restore_command(archive_mount) + "'",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
    ]
    if set_aside_stream:
        settings.append("hot_standby = off")
    if point:
        settings.append("recovery_target = 'immediate'")
    elif target is not None:
        settings.append(f"recovery_target_time = '{target.isoformat()}'")
    conf = pgdata / "postgresql.auto.conf"
    kept_lines = [line for line in (conf.read_text().splitlines() if conf.exists() else [])
                  if line.strip() != _RECOVERY_HEADER and line.split("=")[0].strip() not in _RECOVERY_KEYS]
    conf.write_text("\n".join([*kept_lines, "", _RECOVERY_HEADER, *settings]) + "\n")
    (pgdata / "recovery.signal").touch()
    os.chmod(pgdata, 0o700)
    return chosen


def _copy_wal(root: Path, chosen: BaseBackup, into: Path, *, histories_only: bool = False) -> None:
    """The timelines' history files (so the recovered server picks a timeline no earlier recovery
    used) and, unless `histories_only`, the archived segments from the base backup's first on, of
    its timeline and later ones (the one being written too), in the archive's own layout."""
    first = chosen.start_segment[8:]

    def needed(path: Path) -> bool:
        if path.name.endswith(".history"):
            return True
        match = _SEGMENT.match(path.name)
        return (not histories_only and match is not None and int(match.group(1), 16) >= chosen.timeline
                and match.group(2) >= first)

    for folder in stream_dirs(root):
        wanted = [p for p in folder.iterdir() if needed(p)]
        if wanted:
            (into / folder.name).mkdir(parents=True, exist_ok=True)
            for path in wanted:
                shutil.copyfile(path, into / folder.name / path.name)


def _extract(tar: tarfile.TarFile, into: Path) -> None:
    """Unpack a base backup's tar with nothing landing outside `into`: tarfile's "data" filter
    where this Python has it (3.11.4 on; the image's Debian 3.11.2 has not), else a stricter
    refusal by hand (an absolute or `..` path, any link or device)."""
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(into, filter="data")
        except tarfile.FilterError as exc:
            raise WalArchiveError(f"{tar.name}: refusing it: {exc}") from None
        return
    root = into.resolve()
    members = tar.getmembers()
    for member in members:
        if not (member.isfile() or member.isdir()):  # a link could chain its way out; a base backup without
            raise WalArchiveError(f"{tar.name}: refusing {member.name!r}: only files and folders are "  # tablespaces has none
                                  "unpacked here (a link or a device could land outside the data directory)")
        if not (root / member.name).resolve().is_relative_to(root):
            raise WalArchiveError(f"{tar.name}: refusing {member.name!r}, which would land outside {into}")
        member.mode &= 0o755  # as the data filter: no setuid, nothing writable by others
    tar.extractall(into, members)  # noqa: S202 - every member checked above


def _restore_command(archive_mount: str) -> str:
    """A segment from whichever stream holds it, the one being written (.partial) included."""
    return (f"for d in {archive_mount}/{WAL_DIR}-* {archive_mount}/{WAL_DIR}; do "
            "if [ -f $d/%f ]; then exec cp $d/%f %p; fi; if [ -f $d/%f.partial ]; then exec cp $d/%f.partial %p; fi; "
            "done; exit 1")


def replication_lag(url: str, *, timeout: float = 10) -> float:
    """Seconds the WAL receiver is behind the server (flush lag; 0 when it has everything);
    `WalArchiveError` when no receiver is streaming (the archive is not being fed)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": int(timeout)})
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.text(
                "SELECT extract(epoch FROM coalesce(flush_lag, interval '0'))::float, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint "
                "FROM pg_stat_replication WHERE application_name = 'pg_receivewal' ORDER BY flush_lsn DESC LIMIT 1"
            )).first()
    finally:
        engine.dispose()
    if row is None:
        raise WalArchiveError("no WAL receiver is streaming from the server (pg_stat_replication has no pg_receivewal)")
    return float(row[0])
