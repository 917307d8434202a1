"""Content-defined chunks: cutting a stream (FastCDC), storing each chunk once, reading it back.

Cutting: `fastcdc` (FastCDC, Xia et al. 2016; the `fastcdc` package's Cython cutter) over a
stream read in 8 MiB blocks, so memory stays bounded whatever the file's size. A boundary
depends only on the bytes before it since the previous boundary, so an insert or a change
moves the boundaries around it and no others: a changed row of a database costs the chunk or
two around it, not the file. Sizes: `AVERAGE` 256 KiB, at least `MINIMUM` 64 KiB, at most
`MAXIMUM` 1 MiB (chosen by measurement: docs/BACKUP_FORMAT.md, "Chunk size").

Storing: `chunks/ab/<sha256>`, named by the SHA-256 of the chunk's content. A chunk is stored
as a zstd frame when that makes it at least `WORTH` smaller, raw otherwise (random or already
compressed data): the stored bytes start with the zstd frame magic (28 b5 2f fd) exactly when
they are compressed, and a chunk whose own content starts with that magic is always stored
compressed, so there is never any doubt. A compressed chunk is decompressed and re-hashed before
it is written; each new chunk goes to staging and is renamed into place; the file system is
synced once before the manifest is written, and the backup's integrity check re-reads the new
chunks from disk: what a backup wrote is checked once, right after it is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import _fs
from .errors import BackupError

MINIMUM, AVERAGE, MAXIMUM = 64 << 10, 256 << 10, 1 << 20
READ_BLOCK = 8 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 3
WORTH = 0.95  # store compressed only if it saves at least 5%
#: After this many chunks of a file in a row that did not compress, try only every `RETRY`th.
GIVE_UP, RETRY = 4, 16
#: Chunks cut but not yet stored, at most (bounds memory: IN_FLIGHT x MAXIMUM).
IN_FLIGHT = 16
#: Threads storing chunks (hashing, compressing, writing), beside the cutter and the stream hash.
WORKERS = 2


def chunk_relpath(sha256: str) -> str:
    return f"chunks/{sha256[:2]}/{sha256}"


@dataclass(frozen=True)
class Chunk:
    sha256: str
    length: int  # bytes of content
    stored: int  # bytes on disk (compressed or raw)


class Cutter:
    """Feed bytes in, take content-defined chunks out (the last one when the stream ends)."""

    def __init__(self, minimum: int = MINIMUM, average: int = AVERAGE, maximum: int = MAXIMUM) -> None:
        from fastcdc.fastcdc_cy import chunk_generator

        self._generate = chunk_generator
        self._sizes = (minimum, average, maximum)
        self._tail = b""  # fed, not yet part of a chunk (less than `maximum`)

    def feed(self, data: bytes | memoryview, *, final: bool = False) -> Iterator[memoryview]:
        """Chunks that end within what was fed so far; with `final`, everything that is left.
        (The chunks are views of an immutable copy: a caller may keep them. Each byte fed is
        copied into one block; the unfinished tail, under `maximum`, again into the next.)"""
        block = b"".join((self._tail, data)) if self._tail else bytes(data)
        if not block:
            return
        view = memoryview(block)
        done = 0
        minimum, average, maximum = self._sizes
        for piece in self._generate(view, minimum, average, maximum, False, None):
            end = piece.offset + piece.length
            if end == len(block) and not final:
                break  # may end further on: cut again once more bytes came
            yield view[piece.offset:end]
            done = end
        self._tail = bytes(view[done:])


class ChunkStore:
    """`root/chunks/`: each chunk once, checked when written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "chunks"
        self._known: dict[str, int] | None = None  # sha -> stored size, listed once per run
        self._lock = threading.Lock()  # `put` runs in `WORKERS` threads
        self._writing: dict[str, threading.Event] = {}  # chunks a thread is storing right now

    def path(self, sha256: str) -> Path:
        return self.root / chunk_relpath(sha256)

    def known(self) -> dict[str, int]:
        """Every stored chunk and its stored size (one listing of `chunks/`, then kept up to date)."""
        if self._known is None:
            found: dict[str, int] = {}
            for prefix in _listdir(self.dir):
                if not re.fullmatch(r"[0-9a-f]{2}", prefix):
                    continue
                for entry in _scandir(self.dir / prefix):
                    if entry.name.startswith(prefix) and len(entry.name) == 64 and entry.is_file(follow_symlinks=False):
                        found[entry.name] = entry.stat(follow_symlinks=False).st_size
            self._known = found
        return self._known

    def forget(self) -> None:
        self._known = None

    def put(self, content: memoryview, sha256: str, staging: Path, compressor: _Compression, added: list[Path]) -> Chunk:
        """Store `content` (whose SHA-256 is `sha256`) unless it is there. A compressed payload
        is decompressed and re-hashed before it is written. Not fsynced one by one: the
        repository syncs the file system once before it writes the manifest (`_fs.sync_fs`),
        and the backup's integrity check reads the new chunks back. Thread-safe: of two threads
        given the same new chunk, one stores it and the other waits for it."""
        while True:
            with self._lock:
                known = self.known()  # listed once, under the lock: both workers see one dict
                if sha256 in known:
                    return Chunk(sha256, len(content), known[sha256])
                other = self._writing.get(sha256)
                if other is None:
                    self._writing[sha256] = claim = threading.Event()
                    break
            other.wait()  # stored by then, or that thread failed (and this one tries)
        try:
            return self._store(content, sha256, staging, compressor, added)
        finally:
            with self._lock:
                del self._writing[sha256]
            claim.set()

    def _store(self, content: memoryview, sha256: str, staging: Path, compressor: _Compression, added: list[Path]) -> Chunk:
        payload = compressor.encode(content)
        if payload[:4] == ZSTD_MAGIC and hashlib.sha256(decode(payload, len(content), "a chunk being stored")).hexdigest() != sha256:
            raise BackupError("a chunk does not decompress to what was compressed (memory or library fault); no backup was made")
        tmp = staging / f"chunk-{sha256}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        target = self.path(sha256)
        try:
            try:
                _fs.write_all(fd, memoryview(payload))
            finally:
                os.close(fd)
            if not target.parent.is_dir():
                _fs.mkdirs(target.parent, self.dir)
            existed = os.path.lexists(target)
            os.replace(tmp, target)  # (also replaces a damaged copy of the same content)
        except BaseException:
            tmp.unlink(missing_ok=True)  # nothing half-written stays, and a thread that waited can try again
            raise
        with self._lock:
            if not existed:
                added.append(target)
            self.known()[sha256] = len(payload)
        return Chunk(sha256, len(content), len(payload))

    def read(self, sha256: str, length: int) -> bytes:
        """The chunk's content, checked against its name; `BackupError` saying what is wrong."""
        path = self.path(sha256)
        try:
            fd = _fs.open_regular(path, "chunk")
        except FileNotFoundError:
            raise BackupError(f"chunk {chunk_relpath(sha256)} is missing") from None
        try:
            data = _read_all(fd)
        finally:
            os.close(fd)
        content = decode(data, length, chunk_relpath(sha256))
        if hashlib.sha256(content).hexdigest() != sha256:
            raise BackupError(f"chunk {chunk_relpath(sha256)} is corrupt: its content does not hash to its name")
        return content

    def problem(self, sha256: str, stored: int, *, read: bool) -> str | None:
        """What is wrong with a stored chunk (None: nothing): its size from `stat`, and with
        `read` its content re-read and re-hashed."""
        rel = chunk_relpath(sha256)
        try:
            st = os.lstat(self.path(sha256))
        except FileNotFoundError:
            return f"chunk {rel} is missing"
        except OSError as exc:
            return f"chunk {rel} cannot be read ({exc.strerror or exc})"
        if not stat.S_ISREG(st.st_mode):
            return f"chunk {rel} is not a regular file"
        if st.st_size != stored:
            word = "truncated" if st.st_size < stored else "too long"
            return f"chunk {rel} is {word}: {st.st_size} bytes stored, the file list says {stored}"
        if read:
            try:
                self.read(sha256, -1)
            except BackupError as exc:
                return str(exc)
            except OSError as exc:
                return f"chunk {rel} cannot be read ({exc.strerror or exc})"
        return None

    def iter_stored(self) -> Iterator[tuple[str, Path]]:
        for prefix in sorted(_listdir(self.dir)):
            if not re.fullmatch(r"[0-9a-f]{2}", prefix):
                continue
            for entry in sorted(_scandir(self.dir / prefix), key=lambda e: e.name):
                if entry.name.startswith(prefix) and len(entry.name) == 64:
                    yield entry.name, Path(entry.path)


class _Compression:
    """Per file: compress while it pays; after `GIVE_UP` chunks in a row that did not, try only
    every `RETRY`th chunk (random or already compressed data costs no compression time)."""

    def __init__(self) -> None:
        import zstandard

        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
        self._misses = 0
        self._skipped = 0

    def encode(self, content: memoryview) -> bytes | memoryview:
        """What to store: a zstd frame, or the content itself (not copied)."""
        must = bytes(content[:4]) == ZSTD_MAGIC  # raw bytes that would look compressed
        if not must and self._misses >= GIVE_UP:
            self._skipped += 1
            if self._skipped % RETRY:
                return content
        packed = self._compressor.compress(content)
        if must or len(packed) <= WORTH * len(content):
            self._misses = 0
            return packed
        self._misses += 1
        return content


def compression() -> _Compression:
    return _Compression()


def decode(data: bytes, length: int, where: str) -> bytes:
    """Stored bytes -> content (`length` -1: not known, not checked)."""
    if data[:4] != ZSTD_MAGIC:
        content = data
    else:
        import zstandard

        try:
            content = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAXIMUM * 2)
        except zstandard.ZstdError as exc:
            raise BackupError(f"{where} is corrupt: not a readable zstd frame ({exc})") from None
    if length >= 0 and len(content) != length:
        raise BackupError(f"{where} holds {len(content)} bytes, the file list says {length}")
    return content


def _read_all(fd: int) -> bytes:
    parts = []
    while block := os.read(fd, 1 << 20):
        parts.append(block)
    return b"".join(parts)


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def store_stream(
    store: ChunkStore, read: Callable[[int], bytes], staging: Path, added: list[Path]
) -> tuple[str, int, list[Chunk]]:
    """Read a stream to its end once, cut it into chunks and store the new ones; returns the
    stream's SHA-256, its size and its chunks. The work overlaps: this thread reads and cuts
    (the cutter holds the GIL), one thread hashes the whole stream, `WORKERS` threads hash,
    compress, write and check the chunks (hashlib, zstd and file I/O release the GIL; one
    worker alone was the slowest of the three, measured in benchmarks/bench_backup.py). At most
    `IN_FLIGHT` chunks wait, so memory stays bounded."""
    whole = hashlib.sha256()
    cutter = Cutter()
    codecs = threading.local()  # a zstd compressor is not shared between threads
    stored: list[Chunk] = []
    in_flight: deque[Future[Chunk]] = deque()  # oldest first: results are taken in order
    size = 0

    def store_piece(piece: memoryview) -> Chunk:
        codec = getattr(codecs, "codec", None)
        if codec is None:
            codec = codecs.codec = compression()
        return store.put(piece, hashlib.sha256(piece).hexdigest(), staging, codec, added)

    with ThreadPoolExecutor(1, thread_name_prefix="backup-hash") as hasher, \
            ThreadPoolExecutor(WORKERS, thread_name_prefix="backup-chunks") as writer:
        pending_hash: Future[None] | None = None
        while True:
            block = read(READ_BLOCK)
            if pending_hash is not None:
                pending_hash.result()  # whole-stream updates stay in order
            pending_hash = hasher.submit(whole.update, block)
            size += len(block)
            for piece in cutter.feed(block, final=not block):
                in_flight.append(writer.submit(store_piece, piece))
                if len(in_flight) > IN_FLIGHT:
                    stored.append(in_flight.popleft().result())
            if not block:
                break
        pending_hash.result()
        stored.extend(future.result() for future in in_flight)
    return whole.hexdigest(), size, stored


