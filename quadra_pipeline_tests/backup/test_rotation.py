"""The hourly re-reading rotation: every stored chunk re-read within N runs (the rotation
period), whichever backup holds it (old daily, weekly and monthly ones too), across prunes and
additions; the reads counted at the chunk store itself."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from quadra_pipeline.backup import chunks as chunk_module
from quadra_pipeline.backup.rotation import Rotation, slot_of
from quadra_pipeline_tests.backup.repository_helpers import write_tree

N = 6
HOUR = 500_000  # an hour index (hours since 1970): any will do


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """Every chunk read back from the store (decompressed and re-hashed), counted by its id."""
    counted: Counter = Counter()
    original = chunk_module.ChunkStore.read

    def counting(self, sha256: str, length: int) -> bytes:
        counted[sha256] += 1
        return original(self, sha256, length)

    monkeypatch.setattr(chunk_module.ChunkStore, "read", counting)
    return counted


def backup_of(repo, tmp_path: Path, seed: int, size: int = 600_000) -> str:
    """A backup of one file of its own random content: its chunks held by it alone."""
    data = random.Random(seed).randbytes(size)
    files = write_tree(tmp_path / f"src-{seed}", {f"data-{seed}.bin": data})
    return repo.create(files, sources={"seed": seed}).manifest.backup_id


def stored(repo) -> set[str]:
    return {sha for sha, _ in repo.chunks.iter_stored()}


def test_every_stored_chunk_is_reread_within_the_period_whoever_holds_it(repo, tmp_path, reads):
    """Old backups (their chunks held by nobody else), one pruned away, new ones added while the
    rotation runs: over any N consecutive hourly runs every chunk stored at the start is read,
    once; each run reads about 1/N of them and says how much."""
    ids = [backup_of(repo, tmp_path, seed) for seed in range(8)]  # the old dailies, weeklies, monthlies
    repo.delete(ids[3])
    repo.gc()
    rotation = Rotation(repo, runs=N)
    for window in range(2):  # two whole periods, a backup added and one pruned in the middle of each
        at_start = stored(repo)
        reads.clear()
        per_run = []
        for offset in range(N):
            hour = HOUR + window * N + offset
            if offset == N // 2:
                backup_of(repo, tmp_path, 100 + window)
                repo.delete(ids[window])
                repo.gc()
            before = Counter(reads)
            report = rotation.run(hour=hour)
            assert report.ok, report.problems
            read_now = reads - before
            assert report.chunks_read == sum(read_now.values())  # it says how much it read
            assert {slot_of(sha, N) for sha in read_now} <= {hour % N}  # by ranges of the chunk ids
            assert report.slots == [hour % N] and report.of == N
            per_run.append(report.chunks_read)
        gone = at_start - stored(repo)  # pruned during the window: nothing left to read
        assert set(reads) >= at_start - gone, "chunks not re-read within the period"
        assert max(reads.values()) == 1  # and none twice
        assert sum(per_run) <= len(at_start | stored(repo))
        assert max(per_run) < 0.5 * len(at_start)  # a share per run, not everything
    assert report.oldest_hours is not None and report.oldest_hours <= N


def test_a_missed_hour_is_caught_up_and_a_lost_state_restarts_without_a_full_read(repo, tmp_path, reads):
    for seed in range(4):
        backup_of(repo, tmp_path, seed)
    everything = stored(repo)
    rotation = Rotation(repo, runs=N)
    for hour in range(HOUR, HOUR + N):
        rotation.run(hour=hour)
    reads.clear()
    # The daemon was down for three hours: the next run reads its own share and the three missed ones.
    report = rotation.run(hour=HOUR + N + 3)
    assert sorted(report.slots) == sorted({(HOUR + N + k) % N for k in range(4)})
    assert set(reads) == {sha for sha in everything if slot_of(sha, N) in report.slots}
    # The local state deleted: the rotation starts again with one share per run (no full re-read),
    # and still covers everything within N runs.
    (repo.root / "cache" / "verify-rotation.json").unlink()
    reads.clear()
    fresh = Rotation(repo, runs=N)
    first = fresh.run(hour=HOUR + 100)
    assert first.slots == [(HOUR + 100) % N]
    for hour in range(HOUR + 101, HOUR + 100 + N):
        fresh.run(hour=hour)
    assert set(reads) == everything


def test_a_damaged_chunk_is_found_named_with_its_backups_and_read_again_every_run_until_it_is_gone(repo, tmp_path, reads):
    old = backup_of(repo, tmp_path, 1)
    new = backup_of(repo, tmp_path, 2)
    manifest = repo.read_manifest(old)
    victim = next(iter(manifest.chunks))
    path = repo.chunks.path(victim)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    rotation = Rotation(repo, runs=N)
    hour = next(h for h in range(HOUR, HOUR + N) if h % N == slot_of(victim, N))
    report = rotation.run(hour=hour)
    assert not report.ok
    assert report.damaged_backups == [old] and new not in report.damaged_backups
    assert any(victim in p and old in p for p in report.problems), report.problems
    # The next hour reads another share, and the damaged chunk again: the check stays red.
    again = rotation.run(hour=hour + 1)
    assert not again.ok and reads[victim] == 2
    path.unlink()  # deleted by hand: still red while a backup names it
    missing = rotation.run(hour=hour + 2)
    assert not missing.ok and any("is missing" in p and old in p for p in missing.problems), missing.problems
    repo.delete(old)
    repo.gc()
    assert rotation.run(hour=hour + 3).ok  # gone with the only backup that held it
