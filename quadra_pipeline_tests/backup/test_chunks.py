"""The chunk store under its own concurrency: `store_stream` stores chunks from several threads,
so two threads may be handed the same new chunk at the same moment."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from quadra_pipeline.backup.chunks import WORKERS, ChunkStore, compression, decode, store_stream


def _store(root: Path) -> tuple[ChunkStore, Path]:
    store = ChunkStore(root)
    (root / "chunks").mkdir(parents=True)
    staging = root / "staging"
    staging.mkdir()
    return store, staging


def test_the_same_new_chunk_from_many_threads_at_once_is_stored_once(tmp_path):
    store, staging = _store(tmp_path / "repo")
    content = memoryview(os.urandom(300_000))
    sha = hashlib.sha256(content).hexdigest()
    added: list[Path] = []
    start = threading.Barrier(8)
    results, errors = [], []

    def put() -> None:
        start.wait()
        try:
            results.append(store.put(content, sha, staging, compression(), added))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 8 and len(set(results)) == 1
    assert added == [store.path(sha)]  # recorded once: an undo removes it once
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
