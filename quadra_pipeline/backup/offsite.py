"""The off-site copy of the backup repository: a second location (an S3 bucket, or a folder)
holding the same layout as the repository (docs/BACKUP_FORMAT.md), kept in step after each backup.

    copy = open_object_store("s3://bucket/quadra-backups")
    result = push(repository, copy)            # only what the copy lacks; the head last
    reports = verify(copy, keys=..., keyring=...)  # the public key alone is enough
    restore(copy, "latest", target, keys=..., keyring=...)

**Push** (`push`). The repository's metadata is read under its lock (milliseconds: the head,
the manifests and sidecars, the history records), then the data is copied without it, in an
order in which an interrupted push never looks complete: chunks and file lists first, then the
history records, then each new backup's sidecar and manifest (oldest first), then the deletions
the signed `pruned` records call for, and `head.json` last. Only what the copy lacks is written
(one listing of the copy tells what it holds, by name and size): a second push of an unchanged
repository writes nothing. Each chunk is re-hashed before it leaves, so a chunk damaged on the
local disk is never copied. A push refuses to go on when the local history is broken, or when the
copy's head is not in the local history (another repository pushes there, or this one was rolled
back): it never overwrites a history it cannot extend. After the head, chunks and file lists that
no backup left in the copy references are deleted (the same retention as the local repository,
applied from its signed records: nothing is decided off-site).

**Verify** (`verify`): the same checks as `quadra backup verify`, by the same code, over a
store-backed view: the metadata (manifests, sidecars, file lists, head, records; a few KB per
backup) is fetched into a temporary folder and checked there by `BackupRepository` with the
public keys only; the chunks are not fetched for presence and size (one listing of the copy gives
both) and are fetched and re-hashed only where asked (`read`: every chunk, a rotating share, or
a given set such as those a push just wrote). Fetching everything to a temporary copy would read
the whole repository over the network each time; a view that re-implemented the checks would
drift from them. The local repository, where there is one, is the second witness: the last push
is recorded in its cache, and a copy whose head went back from it (an older copy put back
whole, which looks consistent on its own) is reported.

**Restore** (`fetch`, `restore`): the metadata and the chunks of the one backup are fetched into
a temporary repository beside the target, and `BackupRepository.restore` restores from it as
from any repository (manifest, signature and history checked first; every chunk and file
checked as written). `pull` fetches every backup, rebuilding a lost local repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..keys import KeyPair, Keyring
from ..objectstore import ObjectNotFoundError, ObjectStore, ObjectStoreError
from . import format2, format3
from .chunks import chunk_relpath, decode
from .errors import BackupError, IntegrityError, UnknownBackupError, summarize
from .history import HEAD_FORMAT
from .names import check_backup_id, is_sha256, object_relpath
from .repository import BackupRepository
from .verification import VerifyReport

#: Object-store calls at once (latency-bound: S3 answers each small object in milliseconds).
TRANSFERS = 8
#: The report about the copy's history, as `BackupService.verify` names its own.
HISTORY = "history"
METADATA_PREFIXES = ("manifests/", "history/", "objects/")
HEAD = "head.json"

Log = Callable[[str], None]


class OffsiteError(BackupError):
    """The off-site copy cannot be pushed, read or trusted; the message says which and why."""


@dataclass
class PushResult:
    url: str
    chunks_written: int = 0
    objects_written: int = 0
    manifests_written: int = 0
    records_written: int = 0
    head_written: bool = False
    bytes_written: int = 0
    deleted_backups: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    skipped: list[str] = field(default_factory=list)  # local backups not pushed (damaged), with why
    gc_skipped: str | None = None
    written_chunks: set[str] = field(default_factory=set)  # for the check that follows the push
    head: str | None = None  # the copy's newest backup after the push
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"pushed to {self.url}: {self.chunks_written} chunks, {self.objects_written} file lists, "
                f"{self.manifests_written} manifests, {self.records_written} records, head "
                f"{'written' if self.head_written else 'unchanged'}; {self.bytes_written} bytes written; "
                f"{len(self.deleted_backups)} pruned backups and {self.deleted_objects} unreferenced objects deleted "
                f"({self.seconds:.2f} s)")


# The local side --------------------------------------------------------------------------------


@dataclass
class _Backup:
    backup_id: str
    manifest: bytes
    sidecar: bytes
    sequence: int  # 0 for format 2 (outside the chain)
    objects: dict[str, int]  # metadata objects (file list, checksum list) and format-2 data objects -> size
    chunks: dict[str, int]  # chunk -> stored size


@dataclass
class _LocalState:
    head: bytes | None
    backups: dict[str, _Backup]
    records: dict[str, bytes]  # "history/<name>" -> bytes
    pruned: set[str]
    links: dict[str, str]  # backup id -> manifest SHA-256, of every backup the local history knows
    damaged: dict[str, str]


def _object_size(repository: BackupRepository, sha: str) -> int:
    return repository.object_path(sha).stat().st_size


def _local_state(repository: BackupRepository) -> _LocalState:
    """Everything a push needs to know about the repository, read under its lock (no data)."""
    with repository.lock(blocking=True):
        problems = repository.history_problems()
        if problems:
            raise OffsiteError(summarize(f"{repository.root}: nothing was pushed: the repository's history is broken "
                                         "(quadra backup verify)", problems), problems)
        head = repository.history.head_path.read_bytes() if repository.history.head_path.exists() else None
        records: dict[str, bytes] = {}
        if repository.history.records_dir.is_dir():
            for name in sorted(os.listdir(repository.history.records_dir)):
                if name.endswith(".json") and not name.startswith("."):
                    records[f"history/{name}"] = (repository.history.records_dir / name).read_bytes()
        history = repository.history.records()
        backups: dict[str, _Backup] = {}
        damaged: dict[str, str] = {}
        links: dict[str, str] = {i: e.link.manifest_sha256 for i, e in history.pruned.items()}
        for backup_id in repository.backup_ids():
            try:
                data = repository._read_manifest_bytes(backup_id)
                manifest = repository.read_manifest(backup_id)  # name, signature, sidecar, file list
                sidecar = repository.sidecar_path(backup_id).read_bytes()
            except (BackupError, OSError) as exc:
                damaged[backup_id] = str(exc)
                continue
            links[backup_id] = hashlib.sha256(data).hexdigest()
            entries, _ = format2.sidecar_entries(sidecar)
            metadata = [sha for path, sha in entries if path.startswith("objects/")]
            if isinstance(manifest, format3.Manifest):
                chunks = {sha: stored for sha, (_, stored) in manifest.chunks.items()}
                objects = {sha: _object_size(repository, sha) for sha in metadata}
                sequence = manifest.header.sequence
            else:
                chunks = {}
                objects = {sha: _object_size(repository, sha) for sha in metadata}
                objects.update({sha: group[0].size for sha, group in format2.group_by_object(manifest.files).items()})
                sequence = 0
            backups[backup_id] = _Backup(backup_id, data, sidecar, sequence, objects, chunks)
    return _LocalState(head, backups, records, set(history.pruned), links, damaged)


# Pushing ---------------------------------------------------------------------------------------


def _listing(store: ObjectStore) -> dict[str, int]:
    """key -> size of everything in the copy (one paginated listing)."""
    return {key: size for key, size, _ in store.entries()}


def _remote_head(store: ObjectStore, present: dict[str, int]) -> tuple[bytes | None, dict[str, Any] | None]:
    if HEAD not in present:
        return None, None
    data = store.get_bytes(HEAD)
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    return data, document if isinstance(document, dict) and document.get("format") == HEAD_FORMAT else None


def _check_copy_extends(state: _LocalState, remote_head: bytes | None, document: dict[str, Any] | None, url: str) -> None:
    """The copy's head must be a backup of the local history (the same manifest SHA-256): then
    the push only extends what is there. Otherwise it belongs to another history."""
    if remote_head is None:
        return
    if document is None:
        raise OffsiteError(f"{url}: head.json of the off-site copy is not a backup head; nothing was pushed "
                           "(quadra backup offsite verify)")
    backup_id, sha = document.get("backup_id"), document.get("manifest_sha256")
    if state.links.get(backup_id) != sha:
        raise OffsiteError(
            f"{url}: the off-site copy's head names backup {backup_id} (sequence {document.get('sequence')}), which is "
            "not in this repository's history: another repository pushes there, or this one was rolled back; nothing "
            "was pushed (a copy is only ever extended)"
        )


class _Transfers:
    """Bounded parallel object-store calls, counting what was written."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.bytes = 0
        self._lock = threading.Lock()
        if hasattr(store, "client"):
            store.client  # noqa: B018 - made once, before the threads share it

    def put(self, key: str, data: bytes) -> None:
        self.store.put_bytes(key, data)
        with self._lock:
            self.bytes += len(data)

    def run(self, calls: Iterable[Callable[[], None]]) -> None:
        calls = list(calls)
        if not calls:
            return
        with ThreadPoolExecutor(min(TRANSFERS, len(calls)), thread_name_prefix="offsite") as pool:
            for future in [pool.submit(call) for call in calls]:
                future.result()


def _chunk_bytes(repository: BackupRepository, sha: str) -> bytes:
    """A local chunk as stored, after checking that it decodes to its name (damage is not copied)."""
    path = repository.chunks.path(sha)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OffsiteError(f"{repository.root}: chunk {chunk_relpath(sha)} is missing; nothing more was pushed") from None
    if hashlib.sha256(decode(data, -1, chunk_relpath(sha))).hexdigest() != sha:
        raise OffsiteError(f"{repository.root}: chunk {chunk_relpath(sha)} is corrupt (its content does not hash to "
                           "its name); it was not pushed (quadra backup verify --all)")
    return data


def push(repository: BackupRepository, store: ObjectStore, *, log: Log | None = None) -> PushResult:
    """Bring the off-site copy in step with the repository; see the module's docstring."""
    log = log or (lambda line: None)
    started = time.perf_counter()
    result = PushResult(store.url)
    state = _local_state(repository)
    store.check_available()
    present = _listing(store)
    remote_head, head_document = _remote_head(store, present)
    _check_copy_extends(state, remote_head, head_document, store.url)
    for backup_id, why in state.damaged.items():
        if f"manifests/{backup_id}.json" not in present:
            raise OffsiteError(f"{repository.root}: backup {backup_id} is damaged and not yet off-site; nothing was "
                               f"pushed (quadra backup verify): {why}")
        result.skipped.append(f"{backup_id}: damaged here, its off-site copy is kept ({why})")
    transfers = _Transfers(store)
    new = sorted((b for b in state.backups.values() if f"manifests/{b.backup_id}.json" not in present),
                 key=lambda b: (b.sequence, b.backup_id))
    # 1. Data: every chunk and object a backup names that the copy lacks (or holds with another size).
    chunks = {sha: size for b in state.backups.values() for sha, size in b.chunks.items()}
    objects = {sha: size for b in state.backups.values() for sha, size in b.objects.items()}
    missing_chunks = sorted(sha for sha, size in chunks.items() if present.get(chunk_relpath(sha)) != size)
    missing_objects = sorted(sha for sha, size in objects.items() if present.get(object_relpath(sha)) != size)

    def put_chunk(sha: str) -> Callable[[], None]:
        return lambda: transfers.put(chunk_relpath(sha), _chunk_bytes(repository, sha))

    def put_object(sha: str) -> Callable[[], None]:
        def call() -> None:
            data = repository.object_path(sha).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                raise OffsiteError(f"{repository.root}: {object_relpath(sha)} is corrupt; it was not pushed")
            transfers.put(object_relpath(sha), data)
        return call

    transfers.run([put_chunk(sha) for sha in missing_chunks] + [put_object(sha) for sha in missing_objects])
    result.chunks_written, result.objects_written = len(missing_chunks), len(missing_objects)
    result.written_chunks = set(missing_chunks)
    # 2. History records (an `imported` record before its backup; a `pruned` one before the deletion).
    records = [(key, data) for key, data in state.records.items() if present.get(key) != len(data)]
    transfers.run([lambda k=key, d=data: transfers.put(k, d) for key, data in records])
    result.records_written = len(records)
    # 3. New backups, oldest first: the sidecar, then the manifest (the backup exists from then on).
    for backup in new:
        transfers.put(f"manifests/{backup.backup_id}.sha256", backup.sidecar)
        transfers.put(f"manifests/{backup.backup_id}.json", backup.manifest)
        result.manifests_written += 1
    # 4. What retention deleted here (a signed `pruned` record says so): the manifest, then its sidecar.
    remote_ids = {key[len("manifests/"):-len(".json")] for key in present if key.startswith("manifests/") and key.endswith(".json")}
    for backup_id in sorted(remote_ids - set(state.backups)):
        if backup_id in state.pruned:
            store.delete(f"manifests/{backup_id}.json")
            store.delete(f"manifests/{backup_id}.sha256")
            result.deleted_backups.append(backup_id)
        elif backup_id not in state.damaged:
            result.skipped.append(f"{backup_id}: off-site only, and no signed record here says it was pruned: kept")
    # 5. The head, last: from now on the copy's history includes the new backups.
    if state.head is not None and state.head != remote_head:
        transfers.put(HEAD, state.head)
        result.head_written = True
    elif state.head is None and remote_head is not None and not any(b.sequence for b in state.backups.values()):
        store.delete(HEAD)  # every format-3 backup was pruned here, as the records say
    if state.head is not None:
        result.head = json.loads(state.head).get("backup_id")
    # 6. Garbage: chunks and objects no backup left in the copy names.
    kept = (remote_ids | {b.backup_id for b in new}) - set(result.deleted_backups)
    try:
        needed_chunks, needed_objects = _references(store, state, kept)
        garbage = [key for key in present if (key.startswith("chunks/") and key.rsplit("/", 1)[-1] not in needed_chunks)
                   or (key.startswith("objects/") and key.rsplit("/", 1)[-1] not in needed_objects)]
        transfers.run([lambda k=key: store.delete(k) for key in garbage])
        result.deleted_objects = len(garbage)
    except OffsiteError as exc:
        result.gc_skipped = str(exc)
        log(f"off-site garbage not collected: {exc}")
    result.bytes_written = transfers.bytes
    result.seconds = time.perf_counter() - started
    _remember_push(repository, store.url, state.head, result.written_chunks)
    for line in result.skipped:
        log(f"off-site: {line}")
    log(result.summary())
    return result


def _references(store: ObjectStore, state: _LocalState, kept: Collection[str]) -> tuple[set[str], set[str]]:
    """(chunks, objects) the backups kept in the copy name: from the local manifests where they
    are here, else from the copy's own file lists. Refuses when a backup's cannot be told."""
    chunks: set[str] = set()
    objects: set[str] = set()
    for backup_id in kept:
        backup = state.backups.get(backup_id)
        if backup is not None:
            chunks |= set(backup.chunks)
            objects |= set(backup.objects)
            continue
        try:
            sidecar = store.get_bytes(f"manifests/{backup_id}.sha256")
            entries, _ = format2.sidecar_entries(sidecar)
            metadata = [sha for path, sha in entries if path.startswith("objects/") and is_sha256(sha)]
            if not metadata:
                raise ValueError("no file list in its sidecar")
            objects |= set(metadata)
            for sha in metadata:
                data = store.get_bytes(object_relpath(sha))
                listed = format2.listed_objects(data) or set()
                try:
                    from .tree import decode_file_list

                    for entry in decode_file_list(data, chunked=True):
                        chunks |= {c[0] for c in entry.chunks or ()}
                except (BackupError, ValueError):
                    objects |= listed
        except (ObjectStoreError, ValueError) as exc:
            raise OffsiteError(f"off-site backup {backup_id}: its references cannot be told ({exc}); refusing to "
                               "collect garbage there") from None
    return chunks, objects


# The local record of pushes (the second witness) -------------------------------------------------


def _state_path(root: Path, url: str) -> Path:
    return root / "cache" / f"offsite-{hashlib.sha256(url.encode()).hexdigest()[:16]}.json"


def _read_state(root: Path | None, url: str) -> dict[str, Any]:
    if root is None:
        return {}
    try:
        state = json.loads(_state_path(root, url).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(root: Path, url: str, state: dict[str, Any]) -> None:
    path = _state_path(root, url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps(state, sort_keys=True))
        os.replace(staged, path)
    except OSError:
        pass  # only a witness and a rotation's place


def _remember_push(repository: BackupRepository, url: str, head: bytes | None, written: set[str]) -> None:
    state = _read_state(repository.root, url)
    state["last_push_chunks"] = sorted(written)  # what the check after the push re-reads
    if head is not None:
        document = json.loads(head)
        state["pushed_head"] = {"backup_id": document["backup_id"], "manifest_sha256": document["manifest_sha256"],
                                "sequence": document["sequence"]}
    state["url"] = url
    _write_state(repository.root, url, state)


# A store-backed view: the same checks as a local repository ---------------------------------------


class _RemoteChunks:
    """Stands in for `ChunkStore` in a view: presence and stored size from the copy's listing;
    content fetched (in parallel, before the checks ask) and re-hashed for the chunks to read."""

    def __init__(self, store: ObjectStore, sizes: dict[str, int]) -> None:
        self.store = store
        self.sizes = sizes  # chunk -> stored size, from the listing
        self.read_problems: dict[str, str | None] = {}
        self.bytes_read = 0
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:  # what no view reads: restores fetch the chunks first
        raise OffsiteError("a store-backed view has no local chunk files")

    def known(self) -> dict[str, int]:
        return self.sizes

    def forget(self) -> None:
        pass

    def iter_stored(self):
        for sha in sorted(self.sizes):
            yield sha, Path(chunk_relpath(sha))

    def fetch_and_check(self, chunks: Iterable[str]) -> None:
        wanted = [sha for sha in chunks if sha in self.sizes and sha not in self.read_problems]

        def check(sha: str) -> None:
            rel = chunk_relpath(sha)
            try:
                data = self.store.get_bytes(rel)
                content = decode(data, -1, rel)
                problem = None if hashlib.sha256(content).hexdigest() == sha else \
                    f"chunk {rel} is corrupt: its content does not hash to its name"
            except ObjectNotFoundError:
                problem, data = f"chunk {rel} is missing", b""
            except BackupError as exc:
                problem, data = str(exc), b""
            with self._lock:
                self.read_problems[sha] = problem
                self.bytes_read += len(data)

        _Transfers(self.store).run([lambda s=sha: check(s) for sha in wanted])

    def problem(self, sha256: str, stored: int, *, read: bool) -> str | None:
        rel = chunk_relpath(sha256)
        size = self.sizes.get(sha256)
        if size is None:
            return f"chunk {rel} is missing"
        if size != stored:
            word = "truncated" if size < stored else "too long"
            return f"chunk {rel} is {word}: {size} bytes stored, the file list says {stored}"
        if read:
            if sha256 not in self.read_problems:
                self.fetch_and_check([sha256])
            return self.read_problems[sha256]
        return None


@dataclass
class View:
    """A repository whose metadata was fetched from the copy into `root` (temporary)."""

    repository: BackupRepository
    listing: dict[str, int]
    root: Path


def _fetch_metadata(store: ObjectStore, root: Path, listing: dict[str, int]) -> None:
    """Manifests, sidecars, file lists (all of `objects/`: format 3 keeps only file lists there),
    the head and the records, into `root`, as they are in the copy."""
    keys = [k for k in listing if k == HEAD or k.startswith(METADATA_PREFIXES)]

    def fetch(key: str) -> None:
        store.get_file(key, root / key)

    _Transfers(store).run([lambda k=key: fetch(k) for key in keys])


def open_view(store: ObjectStore, root: Path, *, keys: KeyPair | None = None, keyring: Keyring | None = None,
              hmac_key: str | bytes | None = None, require_signature: bool = False) -> View:
    """The copy's metadata in `root` (an empty folder), as a repository whose chunks are the copy's."""
    store.check_available()
    listing = _listing(store)
    _fetch_metadata(store, root, listing)
    repository = BackupRepository(root, keys=_public_only(keys), keyring=keyring, hmac_key=hmac_key,
                                  require_signature=require_signature)
    sizes = {key.rsplit("/", 1)[-1]: size for key, size in listing.items() if key.startswith("chunks/")}
    repository.chunks = _RemoteChunks(store, sizes)  # type: ignore[assignment]
    return View(repository, listing, root)


def _public_only(keys: KeyPair | None) -> KeyPair | None:
    """Reading the copy needs the public key only: the private one never comes near it."""
    return None if keys is None else KeyPair(keys.public_pem)


def list_backups(store: ObjectStore) -> list[str]:
    """The ids of the backups in the copy (those with a manifest), oldest first."""
    ids = []
    for key in store.keys("manifests"):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json") and not name.startswith("."):
            try:
                ids.append(check_backup_id(name[: -len(".json")]))
            except BackupError:
                continue
    return sorted(ids)


def verify(store: ObjectStore, *, read: str | Collection[str] = "all", keys: KeyPair | None = None,
           keyring: Keyring | None = None, hmac_key: str | bytes | None = None, require_signature: bool = False,
           local_root: Path | None = None, rotation_runs: int = 24) -> list[VerifyReport]:
    """Check every backup of the copy and its history, with the public keys only; the last report
    is `history` (chain, head, records; and, with `local_root`, the local record of the last
    push). `read`: "all" (fetch and re-hash every chunk), "subset" (this run's share of a
    rotation that covers every chunk within `rotation_runs` runs), "none", or a set of chunks."""
    with tempfile.TemporaryDirectory(prefix="quadra-offsite-") as tmp:
        view = open_view(store, Path(tmp) / "repo", keys=keys, keyring=keyring, hmac_key=hmac_key,
                         require_signature=require_signature)
        repository, remote = view.repository, view.repository.chunks
        assert isinstance(remote, _RemoteChunks)
        if read == "subset":
            chosen: Any = _rotation(local_root, store.url, set(remote.sizes), rotation_runs)
        elif read == "none":
            chosen = set()
        else:
            chosen = read
        remote.fetch_and_check(remote.sizes if chosen == "all" else chosen)
        reports = []
        for backup_id in repository.backup_ids():
            try:
                reports.append(repository.verify(backup_id, read=chosen))
            except UnknownBackupError as exc:
                reports.append(VerifyReport(backup_id, False, [str(exc)], 0, 0))
        history = repository.history_problems() + _witness_problems(repository, local_root, store.url)
        reports.append(VerifyReport(HISTORY, not history, history, 0, 0))
        return reports


def _rotation(local_root: Path | None, url: str, chunks: set[str], runs: int) -> set[str]:
    state = _read_state(local_root, url)
    position = int(state.get("next_rotation", 0)) % runs if isinstance(state.get("next_rotation", 0), int) else 0
    if local_root is not None:
        state["next_rotation"] = (position + 1) % runs
        _write_state(local_root, url, state)
    return {sha for sha in chunks if int(sha[:8], 16) % runs == position}


def _witness_problems(view: BackupRepository, local_root: Path | None, url: str) -> list[str]:
    pushed = _read_state(local_root, url).get("pushed_head")
    if not isinstance(pushed, dict):
        return []
    head, _ = view.history.read_head()
    if head is None:
        return [f"the off-site copy has no usable head, but backup {pushed.get('backup_id')} (sequence "
                f"{pushed.get('sequence')}) was pushed to it (rolled back or emptied?)"]
    if head.sequence < int(pushed.get("sequence", 0)):
        return [f"the off-site copy's head is backup {head.link.backup_id} (sequence {head.sequence}), older than "
                f"backup {pushed.get('backup_id')} (sequence {pushed.get('sequence')}) that was pushed to it "
                "(the copy was rolled back or replaced by an older copy of itself)"]
    return []


# Fetching and restoring ------------------------------------------------------------------------


def fetch(store: ObjectStore, root: Path, backup_ids: Collection[str] | None = None, *, keys: KeyPair | None = None,
          keyring: Keyring | None = None, hmac_key: str | bytes | None = None, require_signature: bool = False,
          log: Log | None = None) -> BackupRepository:
    """A local repository at `root` (missing or empty) holding the copy's metadata and the chunks
    and objects of `backup_ids` (default: every backup). Each chunk is re-hashed as it arrives;
    the backups' own checks (signature, chain) are those of the repository returned."""
    log = log or (lambda line: None)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise OffsiteError(f"{root}: not empty; the off-site copy is fetched into a new or empty folder")
    view = open_view(store, root, keys=keys, keyring=keyring, hmac_key=hmac_key, require_signature=require_signature)
    repository = view.repository
    ids = list(backup_ids) if backup_ids is not None else repository.backup_ids()
    wanted: dict[str, int] = {}
    problems: list[str] = []
    for backup_id in ids:
        try:
            manifest = repository.read_manifest(backup_id)
        except BackupError as exc:
            problems.append(str(exc))
            continue
        if isinstance(manifest, format3.Manifest):
            wanted.update({sha: stored for sha, (_, stored) in manifest.chunks.items()})
    if problems:
        raise IntegrityError(summarize(f"{store.url}: cannot fetch", problems), problems)
    started, fetched = time.perf_counter(), [0]
    lock = threading.Lock()

    def get(sha: str) -> None:
        rel = chunk_relpath(sha)
        try:
            data = store.get_bytes(rel)
        except ObjectNotFoundError:
            raise IntegrityError(f"{store.url}: chunk {rel} is missing; nothing was restored") from None
        if hashlib.sha256(decode(data, -1, rel)).hexdigest() != sha:
            raise IntegrityError(f"{store.url}: chunk {rel} is corrupt: its content does not hash to its name; "
                                 "nothing was restored")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.part")
        staged.write_bytes(data)
        staged.chmod(0o444)
        os.replace(staged, path)
        with lock:
            fetched[0] += len(data)

    _Transfers(store).run([lambda s=sha: get(s) for sha in sorted(wanted)])
    repository = BackupRepository(root, keys=_public_only(keys), keyring=keyring, hmac_key=hmac_key,
                                  require_signature=require_signature)
    log(f"fetched {len(wanted)} chunks ({fetched[0]} bytes) of {len(ids)} backups from {store.url} "
        f"in {time.perf_counter() - started:.2f} s")
    return repository


def resolve(ids: list[str], backup_id: str, url: str) -> str:
    if backup_id == "latest":
        if not ids:
            raise UnknownBackupError(f"no backups in {url}")
        return ids[-1]
    if backup_id not in ids:
        raise UnknownBackupError(f"backup {backup_id!r} is not in {url}")
    return backup_id


def restore(store: ObjectStore, backup_id: str, target: Path, *, keys: KeyPair | None = None,
            keyring: Keyring | None = None, hmac_key: str | bytes | None = None, require_signature: bool = False,
            log: Log | None = None) -> Any:
    """Restore one backup of the copy into `target` (a new or empty folder): fetched into a
    temporary repository beside it, restored from there with every check, then removed."""
    target = Path(target).absolute()
    backup_id = resolve(list_backups(store), backup_id, store.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.offsite-", dir=target.parent))
    try:
        repository = fetch(store, scratch / "repo", [backup_id], keys=keys, keyring=keyring, hmac_key=hmac_key,
                           require_signature=require_signature, log=log)
        return repository.restore(backup_id, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: Left in a repository while a pull moves the fetched copy into it (a volume's root); a pull
#: that finds it knows the content is its own half-finished move and starts again.
PULL_MOVING = ".pull-moving"
_NOT_THE_REPOSITORY = (".lock", "lost+found")


def pull(store: ObjectStore, repository: BackupRepository, *, log: Log | None = None) -> list[str]:
    """Rebuild a lost local repository from the copy: every backup fetched (each chunk checked),
    then the whole repository verified; `repository.root` must be missing or empty (its lock file,
    `lost+found` and an earlier pull's leftovers aside). Returns the ids."""
    root = repository.root
    # Fetched beside the repository and renamed over it, so it appears whole or not at all; a
    # repository that is a volume's root (the stack's /backups: its parent is not ours to write,
    # a mount point cannot be replaced) is fetched inside it and moved in, under its lock (an
    # hourly backup waits), the chunks first and the head last.
    inside = root.exists() and (root.is_mount() or not os.access(root.parent, os.W_OK))
    with repository.lock(blocking=True) if inside else contextlib.nullcontext():
        if inside and (root / PULL_MOVING).exists():  # an earlier pull killed while it moved in
            for item in root.iterdir():
                if item.name not in _NOT_THE_REPOSITORY:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        if root.exists() and any(p.name not in _NOT_THE_REPOSITORY and not p.name.startswith(".pull-")
                                 for p in root.iterdir()):
            raise OffsiteError(f"{root}: the local repository is not empty; pull only rebuilds a lost one "
                               "(move it aside first)")
        for stale in root.glob(".pull-*") if inside else []:  # an earlier pull's, killed while fetching
            shutil.rmtree(stale, ignore_errors=True)
        return _pull(store, repository, inside, log)


def _pull(store: ObjectStore, repository: BackupRepository, inside: bool, log: Log | None) -> list[str]:
    root = repository.root
    staging = Path(tempfile.mkdtemp(prefix=".pull-" if inside else f".{root.name}.pull-",
                                    dir=root if inside else (root.parent if root.parent.exists() else None)))
    try:
        fetched = fetch(store, staging / "repo", keys=repository.policy.keys, keyring=repository.policy.keyring,
                        hmac_key=repository.policy.hmac_key, require_signature=repository.policy.required, log=log)
        ids = fetched.backup_ids()
        if not ids:
            raise OffsiteError(f"{store.url} holds no backup: nothing to pull (is QUADRA_BACKUP_OFFSITE the copy's "
                               "location, and has a backup been pushed there?)")
        problems = fetched.history_problems()
        for backup_id in ids:
            problems += fetched.verify(backup_id, read="all").problems
        if problems:
            raise IntegrityError(summarize(f"{store.url}: the off-site copy is damaged; nothing was pulled", problems),
                                 problems)
        if inside:
            (root / PULL_MOVING).touch()
            last = ("manifests", "history")  # what names the rest goes in after it, the head at the very end
            for item in sorted((staging / "repo").iterdir(),
                               key=lambda p: (p.name.startswith("head"), p.name in last, p.name)):
                if item.name != ".lock":
                    os.replace(item, root / item.name)
            (root / PULL_MOVING).unlink()
        else:
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging / "repo", root)
        repository.chunks.forget()
        return ids
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["OffsiteError", "PushResult", "View", "fetch", "list_backups", "open_view", "pull", "push", "restore",
           "verify"]


# With the settings (what `quadra backup offsite` and the Dagster assets call) ---------------------


def key_options(settings: Any) -> dict[str, Any]:
    """The verification keys of these settings (public keys: the signing key's own half and the
    keyring), format 2's HMAC key, and whether signatures are required (production)."""
    from ..keys import backup_keyring, backup_signing_keys
    from ..settings import Environment

    return {"keys": backup_signing_keys(settings), "keyring": backup_keyring(settings),
            "hmac_key": settings.secret_key.get_secret_value() if settings.secret_key else None,
            "require_signature": settings.env is Environment.production}


def configured_store(settings: Any, url: str | None = None) -> ObjectStore:
    """The copy at `url`, else QUADRA_BACKUP_OFFSITE; one line naming the variable when neither is set."""
    from ..objectstore import open_object_store

    url = url or settings.backup_offsite
    if not url:
        raise OffsiteError("no off-site copy is configured: set QUADRA_BACKUP_OFFSITE (s3://bucket[/prefix] or a "
                           "folder), or give its URL")
    try:
        return open_object_store(url)
    except ObjectStoreError as exc:
        raise OffsiteError(str(exc)) from None


def push_after_backup(service: Any) -> PushResult | None:
    """What the hourly backup asset calls after `service.create(...)`: push to
    QUADRA_BACKUP_OFFSITE (None when it is not set). Raises on any failure (the copy's head is
    then the previous one: the next hour's push completes it)."""
    if not service.settings.backup_offsite:
        return None
    try:
        return push(service.repository, configured_store(service.settings), log=service.log)
    except ObjectStoreError as exc:
        raise OffsiteError(f"the off-site push failed: {exc}") from None


def check_after_push(service: Any, pushed: PushResult | None = None) -> list[VerifyReport]:
    """The off-site copy's check after a push: every backup's metadata and signature with the
    public keys, every chunk present with its size (one listing), the history and the local
    record of the push; re-reads the chunks this push wrote plus this run's share of the
    rotation (every chunk of the copy within QUADRA_BACKUP_VERIFY_RUNS runs)."""
    settings = service.settings
    store = configured_store(settings)
    chosen: Any = "subset"
    if pushed is None:  # the check runs apart from the push: what the last push wrote, as it recorded
        written = _read_state(service.repository.root, store.url).get("last_push_chunks")
        if isinstance(written, list) and written:
            pushed = PushResult(store.url, written_chunks={c for c in written if isinstance(c, str) and is_sha256(c)})
    if pushed is not None and pushed.written_chunks:
        listing_chunks = {k.rsplit("/", 1)[-1] for k in store.keys("chunks")}
        chosen = _rotation(service.repository.root, store.url, listing_chunks, settings.backup_verify_runs) | \
            pushed.written_chunks
    try:
        return verify(store, read=chosen, local_root=service.repository.root, rotation_runs=settings.backup_verify_runs,
                      **key_options(settings))
    except ObjectStoreError as exc:
        raise OffsiteError(f"the off-site copy cannot be checked: {exc}") from None
