"""The champion check every recovery drill runs: is the model the recovered registry calls
champion really there, byte for byte, signed, and loadable?

One check for three drills, so they cannot drift apart: the hourly backup's `restore_drill`
(files restored from the backup, `drill.py`), the SQLite point-in-time drill (files restored by
`quadra restore`, `replication/drill.py`) and the PostgreSQL point-in-time drill (files fetched
from MLflow's artifact store, `wal_drill.py`). Each drill reads the champion's row and tags from
the registry it recovered (`read_champion`, through a function that runs SQL there), puts the
version's files somewhere, and hands that folder to `verify_champion_files`: the checkpoint must
hash to the SHA-256 its version is tagged with, the signature must verify with the model keyring
of the settings, and the checkpoint must load and run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..registry.names import (
    CHAMPION,
    CHECKPOINT_ARTIFACT,
    MODEL_NAME,
    TAG_CHECKPOINT,
    TAG_SHA256,
    TAG_SIGNATURE_SHA256,
)

#: The champion's version and where MLflow put its files (SQL that runs on SQLite and PostgreSQL).
CHAMPION_SQL = (
    "select v.version, v.storage_location from registered_model_aliases a "
    "join model_versions v on v.name = a.name and v.version = a.version "
    f"where a.alias = '{CHAMPION}' and a.name = :name"
)
TAGS_SQL = "select key, value from model_version_tags where name = :name and version = :version"

#: Runs SQL (with :named parameters) on the recovered MLflow database; returns the rows.
Query = Callable[..., list[tuple]]


class ChampionProblem(Exception):
    """The champion fails the check; the message names the version and what is wrong."""


@dataclass(frozen=True)
class Champion:
    version: int
    storage_location: str
    tags: dict[str, str]

    @property
    def label(self) -> str:
        return f"champion {MODEL_NAME} version {self.version}"


def read_champion(registry: Query) -> Champion | None:
    """The champion of the recovered registry (None: nothing registered as champion yet).
    `ChampionProblem` when the registry cannot be read."""
    try:
        rows = registry(CHAMPION_SQL, name=MODEL_NAME)
        if not rows:
            return None
        version, storage_location = int(rows[0][0]), rows[0][1]
        tags = {str(k): str(v) for k, v in registry(TAGS_SQL, name=MODEL_NAME, version=version)}
    except Exception as exc:  # noqa: BLE001 - a registry that cannot be read is a failed drill
        raise ChampionProblem(f"cannot read the champion from the recovered MLflow database "
                              f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    return Champion(version, storage_location or "", tags)


def artifact_path(artifact_root: Path, storage_location: str) -> str | None:
    """Where a version's files are under MLflow's artifact root (a relative path), from the
    location MLflow recorded: `file:` locations (a local store) are taken relative to the root,
    `mlflow-artifacts:` ones (a server whose --artifacts-destination is the root, locally a folder
    or in the stack an S3 prefix) are already relative. Anything else is not ours to find (None)."""
    parsed = urlparse(storage_location)
    if parsed.scheme in ("file", ""):
        try:
            inside = Path(unquote(parsed.path)).relative_to(artifact_root)
        except ValueError:
            return None
        return "" if inside == Path(".") else inside.as_posix()
    if parsed.scheme == "mlflow-artifacts":
        return unquote(parsed.path).strip("/")
    return None


def verify_champion_files(settings: Any, champion: Champion, model_dir: Path) -> dict[str, Any]:
    """Check the champion's files in `model_dir` (the version's artifact folder as recovered):
    SHA-256 of the checkpoint against its tag, the signature against the model keyring, and a
    load and a probe of the checkpoint. Returns what was checked; `ChampionProblem` otherwise."""
    from ..keys import KeyProblem, model_keyring
    from ..model import file_sha256, load_checkpoint, probe
    from ..registry.signing import SignatureError
    from ..registry.versions import VersionInfo, verify_model_directory

    label, tags = champion.label, champion.tags
    checkpoint = model_dir / tags.get(TAG_CHECKPOINT, CHECKPOINT_ARTIFACT)
    if not checkpoint.exists():
        raise ChampionProblem(f"{label}: its checkpoint is not in the restored artifacts")
    actual = file_sha256(checkpoint)
    if actual != tags.get(TAG_SHA256):
        raise ChampionProblem(f"{label}: checkpoint SHA-256 {actual[:12]} differs from the tagged {str(tags.get(TAG_SHA256))[:12]}")
    if not tags.get(TAG_SIGNATURE_SHA256):
        raise ChampionProblem(f"{label} is not signed (quadra model sign {champion.version}), so its restored files cannot be verified")
    try:
        info = VersionInfo(champion.version, [], tags, dt.datetime.now(dt.UTC), None, model_name=MODEL_NAME)
        verify_model_directory(model_dir, info, model_keyring(settings), f"restored {label}")
    except (SignatureError, KeyProblem) as exc:
        raise ChampionProblem(str(exc)) from None
    try:
        figures = probe(load_checkpoint(checkpoint).model, count=20)
    except Exception as exc:  # noqa: BLE001 - the drill reports, it does not crash
        raise ChampionProblem(f"{label}: the restored checkpoint does not load ({exc})") from None
    return {"version": champion.version, "sha256": actual, "signature": "verified", "probe_update_field": figures.update_field}


__all__ = ["Champion", "ChampionProblem", "Query", "artifact_path", "read_champion", "verify_champion_files"]
