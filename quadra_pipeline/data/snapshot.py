"""A corpus snapshot: the rows a training run reads, frozen to parquet with a held-out split.

Whatever the source (generator, files, Hugging Face), the pipeline trains on a snapshot, so a
run can be repeated exactly and its data fingerprint means something. The snapshot is a
folder named by the SHA-256 of its rows, holding `train.parquet`, `held_out.parquet` (the
last rows, never trained on) and `snapshot.json`; it is written to a temporary folder and
renamed, so a half-written snapshot never looks complete.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .batching import check_usable, is_usable
from .sources import DataSourceError, TextSource, source_label

TRAIN_FILE = "train.parquet"
HELD_OUT_FILE = "held_out.parquet"
MANIFEST_FILE = "snapshot.json"


@dataclass(frozen=True)
class CorpusSnapshot:
    path: Path
    fingerprint: str
    training_rows: int
    held_out_rows: int
    usable_training_rows: int
    usable_held_out_rows: int
    bytes: int
    source: dict[str, Any]

    @property
    def train_path(self) -> Path:
        return self.path / TRAIN_FILE

    @property
    def held_out_path(self) -> Path:
        return self.path / HELD_OUT_FILE

    def held_out_texts(self) -> list[str]:
        return [t for t in pq.read_table(self.held_out_path, columns=["text"]).column("text").to_pylist() if is_usable(t)]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def rows_fingerprint(train: list[str], held_out: list[str]) -> str:
    """The SHA-256 a snapshot is named by: of its training rows, then its held-out rows."""
    digest = hashlib.sha256()
    for part in (train, held_out):
        digest.update(json.dumps(part, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def write_snapshot(source: TextSource, root: str | os.PathLike[str], training_rows: int, held_out_rows: int) -> CorpusSnapshot:
    """Take `training_rows` then `held_out_rows` rows from `source` into a snapshot under `root`."""
    check_usable(source)
    wanted = training_rows + held_out_rows
    rows = list(itertools.islice(source.rows(), wanted))
    if len(rows) < wanted:
        raise DataSourceError(
            f"{source_label(source)} has {len(rows)} rows; the snapshot needs {training_rows} training "
            f"+ {held_out_rows} held-out rows (lower training_rows or held_out_rows)"
        )
    train, held_out = rows[:training_rows], rows[training_rows:]
    usable_held_out = sum(map(is_usable, held_out))
    if usable_held_out == 0:
        raise DataSourceError(f"{source_label(source)}: none of the {held_out_rows} held-out rows has more than 10 characters")
    fingerprint = rows_fingerprint(train, held_out)
    root = Path(root)
    final = root / fingerprint[:16]
    if (final / MANIFEST_FILE).exists():
        return read_snapshot(final)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{fingerprint[:16]}.", dir=root))
    try:
        pq.write_table(pa.table({"text": train}), staging / TRAIN_FILE)
        pq.write_table(pa.table({"text": held_out}), staging / HELD_OUT_FILE)
        snapshot = CorpusSnapshot(
            path=final,
            fingerprint=fingerprint,
            training_rows=len(train),
            held_out_rows=len(held_out),
            usable_training_rows=sum(map(is_usable, train)),
            usable_held_out_rows=usable_held_out,
            bytes=(staging / TRAIN_FILE).stat().st_size + (staging / HELD_OUT_FILE).stat().st_size,
            source={**source.describe(), "fingerprint": source.fingerprint()},
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(snapshot.as_dict(), indent=2, default=str))
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MANIFEST_FILE).exists():  # someone else won the race: theirs is identical
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_snapshot(final)


def read_snapshot(path: str | os.PathLike[str]) -> CorpusSnapshot:
    path = Path(path)
    manifest = path / MANIFEST_FILE
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise DataSourceError(f"corpus snapshot {path} is missing (no {MANIFEST_FILE}); materialise the corpus asset again") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataSourceError(f"corpus snapshot {path} is unreadable ({exc})") from None
    data["path"] = path
    snapshot = CorpusSnapshot(**data)
    for file in (snapshot.train_path, snapshot.held_out_path):
        if not file.exists():
            raise DataSourceError(f"corpus snapshot {path} is incomplete: {file.name} is missing")
    return snapshot


# Sharing a snapshot between hosts -----------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot as steps on other hosts find it: its fingerprint and its folder in the object
    store (`corpus/<first 16 hex digits>`), with the counts for messages and checks."""

    fingerprint: str
    store_key: str
    training_rows: int
    held_out_rows: int
    source: dict[str, Any]

    @property
    def folder_name(self) -> str:
        return self.fingerprint[:16]


def publish_snapshot(snapshot: CorpusSnapshot, store: Any) -> SnapshotRef:
    """Copy a snapshot's files into the object store (once: a snapshot is named by its rows, so
    one already there is the same) and return the reference other hosts fetch it by."""
    key = f"corpus/{snapshot.fingerprint[:16]}"
    if not store.exists(f"{key}/{MANIFEST_FILE}"):
        store.put_file(f"{key}/{TRAIN_FILE}", snapshot.train_path)
        store.put_file(f"{key}/{HELD_OUT_FILE}", snapshot.held_out_path)
        store.put_file(f"{key}/{MANIFEST_FILE}", snapshot.path / MANIFEST_FILE)  # last: marks it complete
    return SnapshotRef(snapshot.fingerprint, key, snapshot.training_rows, snapshot.held_out_rows, snapshot.source)


def fetch_snapshot(ref: SnapshotRef, store: Any, root: str | os.PathLike[str]) -> CorpusSnapshot:
    """The snapshot under `root` (a host's data home), fetched from the object store when this
    host does not have it yet; its rows are hashed again, so a damaged copy is refused."""
    root = Path(root)
    local = root / ref.folder_name
    if (local / MANIFEST_FILE).exists():
        return read_snapshot(local)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ref.folder_name}.", dir=root))
    try:
        for name in (TRAIN_FILE, HELD_OUT_FILE, MANIFEST_FILE):
            store.get_file(f"{ref.store_key}/{name}", staging / name)
        train = pq.read_table(staging / TRAIN_FILE, columns=["text"]).column("text").to_pylist()
        held_out = pq.read_table(staging / HELD_OUT_FILE, columns=["text"]).column("text").to_pylist()
        if rows_fingerprint(train, held_out) != ref.fingerprint:
            raise DataSourceError(
                f"corpus snapshot {ref.store_key} in {getattr(store, 'url', 'the object store')} does not match its "
                f"fingerprint {ref.fingerprint[:16]} (damaged or replaced): materialise the corpus asset again"
            )
        try:
            os.rename(staging, local)
        except OSError:
            if not (local / MANIFEST_FILE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_snapshot(local)
