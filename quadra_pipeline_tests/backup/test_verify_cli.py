"""`quadra backup verify` answers "are my backups good?" completely: with no option it re-reads
every stored chunk (each once, however many backups share it), so a flipped byte in any chunk,
one only an old backup holds included, fails it, naming the backup and the chunk. `--sample`
re-reads this hour's share of the rotation only, and says so."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from quadra_pipeline.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A data home (a SQLite project database, checkpoints) backed up twice: the second time with
    one checkpoint replaced, so the first backup holds chunks nothing newer holds."""
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY", "QUADRA_BACKUP_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    (home / "checkpoints" / "run-1").mkdir(parents=True)
    db = sqlite3.connect(home / "quadra.db")
    db.execute("create table t (id integer primary key, payload blob)")
    db.executemany("insert into t values (?, ?)", ((i, random.Random(i).randbytes(700)) for i in range(1500)))
    db.commit()
    db.close()
    checkpoint = home / "checkpoints" / "run-1" / "ckpt.pt"
    checkpoint.write_bytes(random.Random(1).randbytes(900_000))
    (home / "checkpoints" / "run-1" / "kept.pt").write_bytes(random.Random(2).randbytes(700_000))
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.chdir(tmp_path)
    return home


def verify(capsys, *args: str) -> tuple[int, str]:
    code = main(["backup", "verify", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_flipped_byte_in_any_chunk_fails_a_plain_verify(home, tmp_path, capsys):
    from quadra_pipeline.backup.service import BackupService
    from quadra_pipeline.settings import load_settings

    assert main(["backup", "create"]) == 0
    (home / "checkpoints" / "run-1" / "ckpt.pt").write_bytes(random.Random(3).randbytes(900_000))
    assert main(["backup", "create"]) == 0
    capsys.readouterr()
    repository = BackupService(load_settings()).repository
    old, new = repository.backup_ids()
    old_chunks, new_chunks = set(repository.read_manifest(old).chunks), set(repository.read_manifest(new).chunks)
    assert old_chunks - new_chunks, "the first backup should hold chunks of its own"
    code, text = verify(capsys)
    assert code == 0, text
    assert f"{len(old_chunks | new_chunks)} distinct chunks re-read" in text  # each once, though most are shared

    every = sorted(old_chunks | new_chunks)
    for sha in every:
        path = repository.chunks.path(sha)
        original = path.read_bytes()
        os.chmod(path, 0o644)
        flipped = bytearray(original)
        flipped[len(flipped) // 3] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            code, text = verify(capsys)
        finally:
            path.write_bytes(original)
            os.chmod(path, 0o444)
        assert code != 0, f"a flipped byte in chunk {sha} (held by {'both' if sha in old_chunks & new_chunks else 'one'}) went unnoticed"
        holders = [b for b, held in ((old, old_chunks), (new, new_chunks)) if sha in held]
        for backup_id in holders:
            line = next(line for line in text.splitlines() if line.startswith(backup_id))
            assert "FAILED" in line and sha in line, text
    code, text = verify(capsys)
    assert code == 0, text


def test_a_sampled_verify_reads_one_share_and_says_so(home, capsys, monkeypatch):
    monkeypatch.setenv("QUADRA_BACKUP_VERIFY_RUNS", "4")
    assert main(["backup", "create"]) == 0
    capsys.readouterr()
    code, text = verify(capsys, "--sample")
    assert code == 0, text
    assert "sampled: this hour's share of the rotation (1 of 4)" in text
    full_code, full = verify(capsys)
    assert full_code == 0 and "distinct chunks re-read" in full
