"""The object store: files that steps on different hosts share (no Dagster here).

A sweep's trials run wherever a Celery worker takes them, so what one step writes and another
reads (a trial's checkpoint, the corpus snapshot) cannot live on one host's disk. Everything
shared goes through this small interface, with two implementations:

- `S3ObjectStore`: any S3 API (AWS S3, SeaweedFS in the Compose stack, ...). Credentials and
  endpoint come the way the AWS SDK reads them (`AWS_SHARED_CREDENTIALS_FILE` or a role;
  `AWS_ENDPOINT_URL_S3` for a service other than AWS), so a user of AWS sets nothing but the
  bucket. Every call is bounded (connect and read timeouts, a few retries): an unreachable
  store is a clear `ObjectStoreUnavailableError` within seconds, never a wait for ever.
- `LocalObjectStore`: a folder (the default, `$QUADRA_HOME/objects`), for one host.

Keys are `/`-separated relative paths. Writes are whole-object (S3's own semantics; the local
store writes to a temporary name and renames), so a reader never sees half an object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

#: Bounds of every S3 call: seconds to connect, seconds per read, attempts in all.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
MAX_ATTEMPTS = 3


class ObjectStoreError(Exception):
    """An object cannot be written or read; the message says which and why (one line)."""


class ObjectStoreUnavailableError(ObjectStoreError):
    """The object store cannot be reached (after bounded retries)."""


class ObjectNotFoundError(ObjectStoreError):
    """No object under that key."""


class ObjectStore(Protocol):
    url: str

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def entries(self, prefix: str = "") -> Iterator[tuple[str, int, str]]: ...
    def delete(self, key: str) -> None: ...
    def check_available(self) -> None: ...


def _clean_key(key: str) -> str:
    parts = [p for p in key.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ObjectStoreError(f"invalid object key {key!r}")
    return "/".join(parts)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalObjectStore:
    """Objects as files under `root` (one host; the default)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def _write(self, key: str, fill) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    fill(handle)
                os.replace(staged, target)
            except BaseException:
                Path(staged).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {key} to {self.url}: {exc.strerror or exc}") from None

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        def fill(handle) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)

        self._write(key, fill)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda handle: handle.write(data))

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path:
        source, dest = self._path(key), Path(dest)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {key} in {self.url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return dest

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key} in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()

    def entries(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(key, size, version) of every object: the version changes when the object does."""
        for key in self.keys(prefix):
            stat = self._path(key).stat()
            yield key, stat.st_size, f"{stat.st_mtime_ns}"

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check_available(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreUnavailableError(f"object store {self.url} is not usable: {exc.strerror or exc}") from None


class S3ObjectStore:
    """Objects in an S3 bucket, under an optional prefix (`s3://bucket/prefix`)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        if not bucket:
            raise ObjectStoreError("an S3 object store needs a bucket: s3://bucket[/prefix]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, verb: str, key: str, action):
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

        what = f"{verb} {key}"
        try:
            return action()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFoundError(f"no object {key} in {self.url}") from None
            message = exc.response.get("Error", {}).get("Message", "") or code
            raise ObjectStoreError(f"object store {self.url} refused {what}: {code} {message}".strip()) from None
        except (ConnectionError, ReadTimeoutError) as exc:
            raise ObjectStoreUnavailableError(
                f"object store {self.url} ({self.endpoint_url or 'AWS'}) is unreachable while {what}: {exc}"
            ) from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"object store {self.url}: {what} failed: {exc}") from None

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self._call("writing", key, lambda: self.client.upload_file(os.fspath(path), self.bucket, self._key(key)))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("writing", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(f".{dest.name}.part")
        try:
            self._call("reading", key, lambda: self.client.download_file(self.bucket, self._key(key), os.fspath(staged)))
            os.replace(staged, dest)
        finally:
            staged.unlink(missing_ok=True)
        return dest

    def get_bytes(self, key: str) -> bytes:
        answer = self._call("reading", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        return self._call("reading", key, lambda: answer["Body"].read())

    def exists(self, key: str) -> bool:
        try:
            self._call("looking up", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ObjectNotFoundError:
            return False
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        for key, _, _ in self.entries(prefix):
            yield key

    def entries(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(key, size, ETag) of every object under `prefix`."""
        full = self._key(prefix) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("listing", prefix or "/", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][strip:], int(item["Size"]), str(item.get("ETag", "")).strip('"')

    def delete(self, key: str) -> None:
        self._call("deleting", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def check_available(self) -> None:
        """The bucket answers (bounded: a few seconds when the service is down)."""
        self._call("checking", "the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client with bounded timeouts and retries, path-style addressing (what S3
    services other than AWS need) and checksums only where the API requires them (SeaweedFS
    does not know the newer default ones: seaweedfs#6548). The endpoint: `endpoint_url`, else
    what the AWS SDK reads (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), else AWS."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def open_object_store(url: str) -> ObjectStore:
    """`s3://bucket[/prefix]` or a local folder (a path or `file://` URL)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3ObjectStore(parts.netloc, parts.path)
    if parts.scheme in ("", "file"):
        return LocalObjectStore(parts.path if parts.scheme == "file" else url)
    raise ObjectStoreError(f"unsupported object store {url!r}: use s3://bucket[/prefix] or a folder")


def fetch_verified(store: ObjectStore, key: str, dest: str | os.PathLike[str], sha256: str) -> Path:
    """`key` at `dest`, whose bytes must have `sha256`: a copy already there is reused when it
    matches; a fetched copy that does not match is deleted and refused (damaged or replaced)."""
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    store.get_file(key, dest)
    actual = sha256_file(dest)
    if actual != sha256:
        dest.unlink(missing_ok=True)
        raise ObjectStoreError(
            f"{key} in {store.url} has SHA-256 {actual[:12]}, not the recorded {sha256[:12]} (damaged or replaced)"
        )
    return dest


@dataclass
class MirrorStats:
    objects: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    removed: int = 0


def mirror(store: ObjectStore, dest: str | os.PathLike[str]) -> MirrorStats:
    """Make `dest` a copy of everything in `store`, fetching only what is new or changed since
    the last mirror (by size and version: an S3 ETag, a file's mtime) and removing what the
    store no longer has. The hourly backup reads S3-held data (MLflow's artifacts, the shared
    objects) from such a copy, so an unchanged hour fetches nothing."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest.with_name(f".{dest.name}.mirror.json")  # beside the copy, not in it
    try:
        index: dict[str, list] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    stats, seen = MirrorStats(), {}
    for key, size, version in store.entries():
        stats.objects += 1
        seen[key] = [size, version]
        local = dest / _clean_key(key)
        if index.get(key) == [size, version] and local.is_file() and local.stat().st_size == size:
            continue
        store.get_file(key, local)
        stats.fetched += 1
        stats.fetched_bytes += size
    for key in set(index) - set(seen):
        (dest / _clean_key(key)).unlink(missing_ok=True)
        stats.removed += 1
    staged = index_path.with_suffix(".tmp")
    staged.write_text(json.dumps(seen, sort_keys=True))
    os.replace(staged, index_path)
    return stats
