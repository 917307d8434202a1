"""The WAL archive's bookkeeping on an archive laid out as pg_basebackup and pg_receivewal lay it
out: what it keeps, what retention removes, what a point-in-time recovery starts from and when
it refuses. (The archive fed by a real server, and a real recovery, run in the Compose stack:
`make deploy-test`, the disaster test.)"""

import datetime as dt
import io
import json
import os
import tarfile

import pytest

from quadra_pipeline.backup.wal import (
    BASE_DIR,
    RECOVERY_WAL,
    WAL_DIR,
    WalArchiveError,
    base_backups,
    check_target,
    kept_range,
    prepare_recovery,
    prune,
    reaches_the_end,
)

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def tar_of(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def base_backup(root, ended: dt.datetime, segment: str) -> None:
    name = (ended - dt.timedelta(seconds=30)).strftime("%Y%m%dT%H%M%SZ")
    folder = root / BASE_DIR / name
    folder.mkdir(parents=True)
    label = f"START WAL LOCATION: 0/{segment[-2:]}000028 (file {segment})\nSTART TIMELINE: 1\n".encode()
    tar_of(folder / "base.tar.gz", {"backup_label": label, "PG_VERSION": b"15\n", "global/pg_control": b"x"})
    tar_of(folder / "pg_wal.tar.gz", {segment: b"wal"})
    (folder / "info.json").write_text(json.dumps({
        "name": name, "started": (ended - dt.timedelta(seconds=30)).isoformat(), "ended": ended.isoformat(),
        "start_segment": segment, "timeline": 1, "bytes": 3}))


def segment(root, number: int, at: dt.datetime, partial: bool = False) -> str:
    name = f"00000001{number:016X}" + (".partial" if partial else "")
    path = root / WAL_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w")
    os.utime(path, (at.timestamp(), at.timestamp()))
    return name


@pytest.fixture
def archive(tmp_path):
    """Daily base backups for 20 days, WAL streamed since the first of the last 10 days."""
    root = tmp_path / "archive"
    for day in range(20, 0, -1):
        base_backup(root, NOW - dt.timedelta(days=day), f"00000001{(100 - day):016X}")
    for number in range(90, 100):
        segment(root, number, NOW - dt.timedelta(days=100 - number))
    segment(root, 100, NOW - dt.timedelta(seconds=2), partial=True)
    return root


def test_the_kept_range_is_continuous_from_the_first_base_backup_with_its_wal(archive):
    kept = kept_range(archive)
    assert kept.continuous_from == NOW - dt.timedelta(days=10)  # the first base backup whose WAL is all there
    assert kept.continuous_to == NOW - dt.timedelta(seconds=2)  # the newest WAL (the partial segment)
    assert len(kept.points) == 10  # the older base backups, each a point of its own


def test_a_recovery_target_outside_the_kept_range_is_refused_with_the_range(archive, tmp_path):
    with pytest.raises(WalArchiveError, match=r"cannot recover to 2026-12-07T12:05:00\+00:00: the archive keeps any moment "
                                              r"from 2026-11-27T12:00:00\+00:00 to 2026-12-07T11:59:58\+00:00"):
        prepare_recovery(archive, tmp_path / "pgdata", target=NOW + dt.timedelta(minutes=5))
    with pytest.raises(WalArchiveError, match="cannot recover to 2026-11-20T09:00:00"):
        prepare_recovery(archive, tmp_path / "pgdata", target=dt.datetime(2026, 11, 20, 9, tzinfo=UTC))
    assert not (tmp_path / "pgdata").exists()


def test_a_recovery_starts_from_the_newest_base_backup_before_the_target(archive, tmp_path):
    target = NOW - dt.timedelta(days=3, hours=5)
    chosen = prepare_recovery(archive, tmp_path / "pgdata", target=target, archive_mount="/wal-archive")
    assert chosen.ended == NOW - dt.timedelta(days=4)
    pgdata = tmp_path / "pgdata"
    assert (pgdata / "recovery.signal").exists() and (pgdata / "PG_VERSION").read_text() == "15\n"
    assert (pgdata / "pg_wal" / chosen.start_segment).exists()
    conf = (pgdata / "postgresql.auto.conf").read_text()
    assert "restore_command = 'for d in /wal-archive/wal-* /wal-archive/wal; do if [ -f $d/%f ]; then exec cp $d/%f %p; fi; " in conf
    # The stream so far is set aside for the new timeline's receiver, and still counts.
    assert (archive / WAL_DIR).is_dir() and not any((archive / WAL_DIR).iterdir())
    assert len([p for p in archive.iterdir() if p.name.startswith("wal-")]) == 1
    assert kept_range(archive).continuous_to == NOW - dt.timedelta(seconds=2)
    assert f"recovery_target_time = '{target.isoformat()}'" in conf and "recovery_target_action = 'promote'" in conf
    assert oct(pgdata.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(WalArchiveError, match="is not empty"):
        prepare_recovery(archive, pgdata)


def test_a_target_at_the_newest_write_recovers_everything_the_archive_holds(archive, tmp_path):
    """`quadra wal status` names the newest write; a recovery *to* it could stop a clock tick short
    of the last commit (the file's time comes from the kernel's coarse clock), so it is the end."""
    newest = kept_range(archive).continuous_to
    chosen = prepare_recovery(archive, tmp_path / "pgdata", target=newest, set_aside_stream=False)
    conf = (tmp_path / "pgdata" / "postgresql.auto.conf").read_text()
    assert "recovery_target_time =" not in conf and "recovery_target_timeline = 'latest'" in conf
    assert chosen.ended == NOW - dt.timedelta(days=1)  # the newest base backup
    assert reaches_the_end(kept_range(archive), newest) and not reaches_the_end(kept_range(archive), newest - dt.timedelta(seconds=1))


@pytest.mark.parametrize("python", ["with the data filter", "without it (Debian's 3.11.2, the image's)"])
def test_a_base_backup_unpacks_on_any_python_311_and_nothing_lands_outside(archive, tmp_path, monkeypatch, python):
    if python.startswith("without"):
        monkeypatch.delattr(tarfile, "data_filter")  # extractall(filter=...) came with 3.11.4
        monkeypatch.setattr(tarfile.TarFile, "extractall", _extractall_of_3_11_2(tarfile.TarFile.extractall))
    chosen = prepare_recovery(archive, tmp_path / "pgdata", set_aside_stream=False)
    assert (tmp_path / "pgdata" / "PG_VERSION").read_text() == "15\n"
    assert (tmp_path / "pgdata" / "pg_wal" / chosen.start_segment).exists()
    # A tampered base backup: a member that would land outside the data directory.
    tar_of(archive / BASE_DIR / chosen.name / "base.tar.gz", {"../escaped": b"x", "PG_VERSION": b"15\n"})
    with pytest.raises(WalArchiveError, match="escaped"):
        prepare_recovery(archive, tmp_path / "pgdata-2", set_aside_stream=False)
    assert not (tmp_path / "escaped").exists()
    # Links that chain their way out, each harmless on its own when checked before any is made.
    with tarfile.open(archive / BASE_DIR / chosen.name / "base.tar.gz", "w:gz") as tar:
        for name, target in (("a/b", ".."), ("a/b/c", "..")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        escaped = tarfile.TarInfo("a/b/c/ESCAPED")
        escaped.size = 1
        tar.addfile(escaped, io.BytesIO(b"x"))
    with pytest.raises(WalArchiveError, match="refusing"):
        prepare_recovery(archive, tmp_path / "pgdata-3", set_aside_stream=False)
    assert not (tmp_path / "ESCAPED").exists() and not list((tmp_path / "pgdata-3").iterdir())  # left empty


def _extractall_of_3_11_2(extractall):
    def without_filter(self, path=".", members=None, *, numeric_owner=False, **unknown):
        if unknown:
            raise TypeError(f"TarFile.extractall() got an unexpected keyword argument {next(iter(unknown))!r}")
        return extractall(self, path, members, numeric_owner=numeric_owner)
    return without_filter


def test_a_server_that_cannot_read_the_archive_gets_the_wal_it_needs_in_its_data_directory(archive, tmp_path):
    """The stack's server mounts no archive and could not read the receiver's files: the WAL from
    the chosen base backup on (the segment being written and the timelines' histories too) is
    copied into the new data directory, and restore_command reads it there, relative to it."""
    (archive / WAL_DIR / "00000002.history").write_text("1\t0/63000000\tno recovery target specified\n")
    chosen = prepare_recovery(archive, tmp_path / "pgdata", copy_wal=True)
    assert chosen.start_segment == "000000010000000000000063"  # the newest base backup's
    copied = tmp_path / "pgdata" / RECOVERY_WAL
    [stream] = [p.name for p in copied.iterdir()]  # the stream, set aside as wal-<time> for the new timeline
    assert stream.startswith(f"{WAL_DIR}-")
    assert sorted(p.name for p in (copied / stream).iterdir()) == [
        "000000010000000000000063", "000000010000000000000064.partial", "00000002.history"]  # nothing older
    conf = (tmp_path / "pgdata" / "postgresql.auto.conf").read_text()
    assert f"restore_command = 'for d in {RECOVERY_WAL}/wal-* {RECOVERY_WAL}/wal; do" in conf
    assert "hot_standby = off" in conf  # closed until recovered: nothing writes to it half-way
    assert "recovery_target_time =" not in conf  # as far as the WAL goes


def test_a_recovery_drops_the_settings_an_earlier_one_left_in_the_base_backup(archive, tmp_path):
    """PostgreSQL keeps a recovery's settings in postgresql.auto.conf after promotion, so a base
    backup of a recovered server carries them: a stale recovery_target_time would stop the next
    recovery before its consistent point (or at the first commit)."""
    newest = base_backups(archive)[-1]
    stale = ("# Do not edit this file manually!\nwork_mem = '8MB'\n\n# Point-in-time recovery (quadra_pipeline.backup.wal)\n"
             "restore_command = 'old'\nrecovery_target_time = '2026-11-01T00:00:00+00:00'\nhot_standby = off\n")
    tar_of(archive / BASE_DIR / newest.name / "base.tar.gz", {"PG_VERSION": b"15\n", "postgresql.auto.conf": stale.encode()})
    prepare_recovery(archive, tmp_path / "pgdata", set_aside_stream=False)
    conf = (tmp_path / "pgdata" / "postgresql.auto.conf").read_text()
    assert "2026-11-01" not in conf and "'old'" not in conf and "hot_standby" not in conf  # a drill's: readable
    assert "work_mem = '8MB'" in conf and conf.count("# Point-in-time recovery") == 1


def test_only_the_chosen_base_backups_timeline_and_later_ones_are_copied(archive, tmp_path):
    (archive / WAL_DIR / "000000000000000000000064").write_bytes(b"a timeline before the base backup's")
    (archive / WAL_DIR / "000000020000000000000064").write_bytes(b"a later timeline")
    prepare_recovery(archive, tmp_path / "pgdata", copy_wal=True)
    [stream] = list((tmp_path / "pgdata" / RECOVERY_WAL).iterdir())
    names = sorted(p.name for p in stream.iterdir())
    assert "000000000000000000000064" not in names and "000000020000000000000064" in names


def test_an_older_point_as_wal_status_prints_it_recovers_that_base_backups_own_state(archive, tmp_path):
    kept = kept_range(archive)
    point = kept.points[-1]  # the newest base backup before the continuous week
    printed = dt.datetime.fromisoformat(point.isoformat(timespec="seconds"))
    assert check_target(kept, printed) == point
    chosen = prepare_recovery(archive, tmp_path / "pgdata", target=printed + dt.timedelta(microseconds=1), copy_wal=True)
    assert chosen.ended == point
    conf = (tmp_path / "pgdata" / "postgresql.auto.conf").read_text()
    assert "recovery_target_time =" not in conf and "recovery_target = 'immediate'" in conf  # its own state
    assert not (tmp_path / "pgdata" / RECOVERY_WAL).exists()  # no segment copied (and no history here)
    with pytest.raises(WalArchiveError, match="cannot recover to .*: the archive keeps any moment from"):
        check_target(kept, point + dt.timedelta(hours=1))


def test_quadra_wal_status_to_answers_before_anything_is_touched(archive, tmp_path, monkeypatch, capsys):
    """`make deploy-restore TO=...` asks this first, before it removes the server and its volume."""
    from quadra_pipeline.cli import main

    monkeypatch.setenv("QUADRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUADRA_WAL_ARCHIVE", str(archive))
    monkeypatch.chdir(tmp_path)
    inside = (NOW - dt.timedelta(days=2)).isoformat()
    assert main(["wal", "status", "--to", inside]) == 0
    assert "can be recovered" in capsys.readouterr().out
    assert main(["wal", "status", "--to", "2026-12-07T12:05:00Z"]) != 0
    assert "cannot recover to 2026-12-07T12:05:00+00:00: the archive keeps any moment from" in capsys.readouterr().err
    assert main(["wal", "status", "--to", "latest"]) == 0  # make deploy-restore without TO asks this
    assert "the newest state" in capsys.readouterr().out
    # The ends as `wal status` prints them, to the second, are the ends (within that second).
    kept = kept_range(archive)
    half = dt.timedelta(milliseconds=500)
    assert check_target(kept, kept.continuous_from - half) == kept.continuous_from
    assert check_target(kept, kept.continuous_to + half) == kept.continuous_to
    empty = tmp_path / "empty-archive"
    empty.mkdir()
    monkeypatch.setenv("QUADRA_WAL_ARCHIVE", str(empty))
    assert main(["wal", "status", "--to", "latest"]) != 0
    assert "nothing can be recovered" in capsys.readouterr().err


def test_retention_keeps_a_week_of_wal_and_base_backups_by_the_backup_plan(archive):
    removed = prune(archive, now=lambda: NOW)
    assert removed["base_backups"] == []  # 20 daily base backups: all within 30 days of dailies
    # WAL older than the first base backup of the last 7 days goes; the partial segment stays.
    assert removed["segments"] == [f"00000001{n:016X}" for n in range(90, 93)]
    assert kept_range(archive).continuous_from == NOW - dt.timedelta(days=7)
    later = prune(archive, now=lambda: NOW + dt.timedelta(days=40))
    assert len(later["base_backups"]) > 0 and base_backups(archive)[-1].ended == NOW - dt.timedelta(days=1)
