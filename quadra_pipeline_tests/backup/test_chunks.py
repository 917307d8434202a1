"""The chunk store under its own concurrency: `store_stream` stores chunks from several threads,
so two threads may be handed the same new chunk at the same moment."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from quadra_pipeline.backup import chunks as chunks_module
from quadra_pipeline.backup.chunks import WORKERS, ChunkStore, compression, decode, store_stream


def _store(root: Path) -> tuple[ChunkStore, Path]:
    store = ChunkStore(root)
    (root / "chunks").mkdir(parents=True)
    staging = root / "staging"
    staging.mkdir()
    return store, staging


class HeldStore(ChunkStore):
    """A chunk store whose first write is held until every thread has looked for the chunk, so
    the others find it claimed and wait: the overlap is forced, not left to the scheduler."""

    def __init__(self, root: Path, threads: int) -> None:
        super().__init__(root)
        self.threads = threads
        self.looked, self.writes = 0, 0
        self.all_looked = threading.Event()

    def known(self) -> dict[str, int]:
        self.looked += 1  # `put` calls this under the store's lock, once per look
        if self.looked >= self.threads:
            self.all_looked.set()
        return super().known()

    def _store(self, *args):
        self.writes += 1
        assert self.all_looked.wait(30), "not every thread looked for the chunk"
        return super()._store(*args)


def put_from_threads(store: ChunkStore, staging: Path, content: memoryview, threads: int):
    sha = hashlib.sha256(content).hexdigest()
    added: list[Path] = []
    start = threading.Barrier(threads)
    results, errors = [], []

    def put() -> None:
        start.wait()
        try:
            results.append(store.put(content, sha, staging, compression(), added))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=put) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers), "a thread is stuck waiting for the chunk"
    return sha, added, results, errors


def test_the_same_new_chunk_from_many_threads_at_once_is_stored_once(tmp_path):
    store = HeldStore(tmp_path / "repo", threads=8)
    _, staging = _store(store.root)
    content = memoryview(os.urandom(300_000))
    sha, added, results, errors = put_from_threads(store, staging, content, 8)
    assert errors == []
    assert store.writes == 1  # the seven others waited for the first, then found it stored
    assert len(results) == 8 and len(set(results)) == 1
    assert added == [store.path(sha)]  # recorded once: an undo removes it once
    assert decode(store.path(sha).read_bytes(), len(content), sha) == bytes(content)
    assert os.listdir(staging) == []


def test_when_the_thread_storing_a_chunk_fails_a_waiting_thread_stores_it(tmp_path, monkeypatch):
    """The first writer fails half-way (the disk full after part of the chunk): its error is
    its own, nothing half-written stays, and one of the threads that waited for it stores the
    chunk instead of taking the failure for a stored chunk."""
    store = HeldStore(tmp_path / "repo", threads=4)
    _, staging = _store(store.root)
    real_write_all, calls = chunks_module._fs.write_all, []

    def full_once(fd: int, data: memoryview) -> None:
        calls.append(len(data))
        if len(calls) == 1:
            os.write(fd, data[:1000])
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(chunks_module._fs, "write_all", full_once)
    content = memoryview(os.urandom(300_000))
    sha, added, results, errors = put_from_threads(store, staging, content, 4)
    assert [type(e) for e in errors] == [OSError]
    assert store.writes == 2 and len(results) == 3 and len(set(results)) == 1
    assert added == [store.path(sha)]
    assert decode(store.path(sha).read_bytes(), len(content), sha) == bytes(content)
    assert os.listdir(staging) == []


def test_a_stream_of_repeated_blocks_stores_each_distinct_chunk_once(tmp_path):
    assert WORKERS > 1  # what this test is about
    store, staging = _store(tmp_path / "repo")
    block = os.urandom(1 << 20)
    data = block * 24 + os.urandom(3 << 20)  # the same chunks over and over, handed to both workers
    source = tmp_path / "repeated.bin"
    source.write_bytes(data)
    added: list[Path] = []
    with open(source, "rb") as handle:
        sha, size, chunks = store_stream(store, handle.read, staging, added)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    distinct = {c.sha256 for c in chunks}
    assert len(chunks) > 2 * len(distinct) - 10  # mostly repeats
    assert sorted(added) == sorted(store.path(s) for s in distinct) and len(added) == len(distinct)
    rebuilt = b"".join(decode(store.path(c.sha256).read_bytes(), c.length, c.sha256) for c in chunks)
    assert rebuilt == data
