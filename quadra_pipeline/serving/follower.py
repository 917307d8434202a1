"""The alias follower: one thread per `quadra serve` that looks at the alias and publishes only
verified versions to the workers.

Every `poll_seconds` (2 s by default), or at once when a verified MLflow webhook touched the
run folder's `wake` file, it reads the registered model's aliases (one GET of the registered
model, or one query of an embedded store). When the alias names a version other than the one
published, it downloads that version's model directory into the run folder, verifies it and
loads it once (`verify.load_verified`), and only then replaces `current.json`, which the
workers watch. A version that fails is never published: the last good one goes on answering,
`status.json` says `degraded` with the reason (the log says it once, the metrics count it), and
the version is looked at again only after `refused_retry_seconds` while the alias still names
it. A rollback to a version verified earlier in this process reuses its files after verifying
them again.

Pre-verifying the challenger: the pipeline moves `challenger` to each version it registers,
before the champion gate and before `champion` moves. Once the served alias is settled, the
follower downloads and verifies the challenger's files too (never serving them), so a promotion
then costs a local re-verification and a load, not a download: against an MLflow server whose
basic authentication hashes the password on every request (230 ms here), a version's ~100
files take 16-19 s to download.

States (`status.json`, merged into `/health` by each worker):
    starting     no look at the registry yet
    waiting      no version holds the alias, nothing was ever served: nothing to do yet
    ok           serving what the alias names
    degraded     serving the last good version, with the reason (refused, unreadable registry,
                 alias removed)
    unavailable  nothing verified to serve, with the reason
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..keys import Keyring
from ..registry.errors import RegistryError, one_line
from ..registry.names import (
    CHALLENGER,
    TAG_CHECKPOINT,
    TAG_FIELD_SIZE,
    TAG_SHA256,
    TAG_SIGNATURE_KEY,
    TAG_SIGNATURE_SHA256,
)
from .cache import RunDir, write_json
from .verify import VersionRefused, load_verified, version_info

log = logging.getLogger("quadra_pipeline.serving")

MLFLOW_REGISTERED_META = "registered_model_meta"
KEEP_VERSIONS = 3  # verified directories kept for rollbacks (the published one among them)
_TAGS_KEPT = (TAG_SHA256, TAG_SIGNATURE_SHA256, TAG_SIGNATURE_KEY, TAG_FIELD_SIZE, TAG_CHECKPOINT, "code_version",
              "signed")


@dataclass
class _Refusal:
    reason: str
    at: float
    tags: dict[str, str] = field(default_factory=dict)


class AliasFollower(threading.Thread):
    def __init__(self, registry: Any, keyring: Keyring, run_dir: RunDir, *, model: str, alias: str,
                 poll_seconds: float, refused_retry_seconds: float = 60.0, on_publish=None,
                 prefetch_alias: str | None = CHALLENGER) -> None:
        super().__init__(name="quadra-alias-follower", daemon=True)
        self.registry = registry
        self.keyring = keyring
        self.run_dir = run_dir
        self.model = model
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.refused_retry_seconds = refused_retry_seconds
        self.prefetch_alias = prefetch_alias if prefetch_alias != alias else None
        self._prefetch_failed: dict[int, float] = {}
        self._stopping = threading.Event()
        self._seq = 0
        self.alias_version: int | None = None
        self.alias_seen = False
        self.move: dict[str, Any] | None = None  # the last alias move seen: from, to, when
        self.published: dict[str, Any] | None = None
        self.problem: str | None = None
        self.last_check_at: float | None = None
        self.last_ok_check_at: float | None = None
        self.refused: dict[int, _Refusal] = {}
        self.counters = {"alias_checks": 0, "alias_check_errors": 0, "alias_moves": 0, "versions_published": 0,
                         "versions_refused": 0, "versions_preverified": 0, "webhook_wakeups": 0}
        self._verified_dirs: dict[int, tuple[Path, dict[str, str]]] = {}
        #: Called with each published `LoadedModel`: with one worker in this process, the
        #: holder takes the model the follower verified and loaded, without loading it again.
        self.on_publish = on_publish

    # The loop ----------------------------------------------------------------------------

    def run(self) -> None:
        self.write_status()
        while not self._stopping.is_set():
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - never let the follower die: say it and go on
                log.exception("the alias follower failed on its look at %s@%s", self.model, self.alias)
                self.problem = f"the alias follower failed: {one_line(str(exc) or type(exc).__name__, 200)}"
                self.write_status()
            self._sleep()

    def stop(self) -> None:
        self._stopping.set()

    def _sleep(self) -> None:
        """Until the next poll, or a webhook's wake-up (checked every 50 ms), or stop."""
        deadline = time.monotonic() + self.poll_seconds
        while not self._stopping.is_set():
            if self.run_dir.take_wake():
                self.counters["webhook_wakeups"] += 1
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(0.05, left))

    # One look ------------------------------------------------------------------------------

    def check_once(self) -> None:
        now = time.time()
        self.last_check_at = now
        self.counters["alias_checks"] += 1
        try:
            aliases = self.registry.aliases()
            version = aliases.get(self.alias)
        except RegistryError as exc:
            self.counters["alias_check_errors"] += 1
            since = _iso(self.last_ok_check_at) if self.last_ok_check_at else "the start"
            problem = f"the registry cannot be read ({exc}); no look at the alias since {since}"
            if problem.split(";")[0] != (self.problem or "").split(";")[0]:
                log.warning("%s", problem)
            self.problem = problem
            self.write_status()
            return
        self.last_ok_check_at = now
        if not self.alias_seen or version != self.alias_version:
            if self.alias_seen:
                self.counters["alias_moves"] += 1
            log.info("alias %s of %s: %s -> %s", self.alias, self.model, _v(self.alias_version) if self.alias_seen else "(start)",
                     _v(version))
            self.move = {"from_version": self.alias_version if self.alias_seen else None, "to_version": version,
                         "seen_at": now}
            self.alias_version, self.alias_seen = version, True
        if version is None:
            self.problem = (f"no version holds alias {self.alias!r} of {self.model}"
                            + (f" (removed since {_iso(self.move['seen_at'])})" if self.published else ""))
        elif self.published is not None and version == self.published["version"]:
            self.problem = None
        else:
            self._follow(version, now)
        self.write_status()
        if self.problem is None and self.prefetch_alias is not None:
            self._preverify(aliases.get(self.prefetch_alias), now)

    def _follow(self, version: int, now: float) -> None:
        refusal = self.refused.get(version)
        if refusal is not None and now - refusal.at < self.refused_retry_seconds:
            self.problem = self._refused_problem(version, refusal.reason)
            if self.move and self.move.get("to_version") == version and self.move.get("seen_at") == now:
                log.error("REFUSED %s version %s (alias %s, refused earlier): %s", self.model, version, self.alias,
                          self.problem)
            return
        try:
            self.publish(version)
        except VersionRefused as exc:
            reason = str(exc)
            self.counters["versions_refused"] += 1
            self.refused[version] = _Refusal(reason, now)
            self.problem = self._refused_problem(version, reason)
            log.error("REFUSED %s version %s (alias %s): %s; %s", self.model, version, self.alias, reason,
                      f"serving version {self.published['version']} still" if self.published else "nothing to serve")
        except RegistryError as exc:  # transient: unreachable, a download that broke
            self.problem = f"{self.model} version {version} could not be fetched ({exc}); trying again"
            log.warning("%s", self.problem)
        else:
            self.refused.pop(version, None)
            self.problem = None

    def _preverify(self, version: int | None, now: float) -> None:
        """Download and verify the challenger ahead of a promotion (see the module's docstring)."""
        if (version is None or version in self._verified_dirs or version in self.refused
                or now - self._prefetch_failed.get(version, -1e12) < self.refused_retry_seconds
                or (self.published is not None and self.published["version"] == version)):
            return
        started = time.monotonic()
        try:
            info = self.registry.get_version(version)
            tags = {k: v for k, v in info.tags.items() if k in _TAGS_KEPT}
            target, _ = self._download(version, info, tags)
        except VersionRefused as exc:
            self.counters["versions_refused"] += 1
            self.refused[version] = _Refusal(str(exc), now)
            log.error("REFUSED %s version %s (alias %s, ahead of a promotion): %s", self.model, version,
                      self.prefetch_alias, exc)
            return
        except RegistryError as exc:
            self._prefetch_failed[version] = now
            log.warning("%s version %s (alias %s) could not be fetched ahead of a promotion: %s", self.model, version,
                        self.prefetch_alias, exc)
            return
        self._verified_dirs[version] = (target, tags)
        self.counters["versions_preverified"] += 1
        if self.published is not None:
            self._prune(keep=self.run_dir.path / self.published["path"])
        log.info("verified %s version %s (alias %s) ahead of a promotion in %.2f s; not served", self.model, version,
                 self.prefetch_alias, time.monotonic() - started)

    def _refused_problem(self, version: int, reason: str) -> str:
        serving = (f"serving version {self.published['version']}, the last one that verified" if self.published
                   else "nothing verified to serve")
        return f"alias {self.alias!r} names version {version}, which was refused: {reason}; {serving}"

    # Publishing ----------------------------------------------------------------------------

    def publish(self, version: int) -> dict[str, Any]:
        """Fetch, verify and load `version`, then point `current.json` at it."""
        started = time.monotonic()
        info = self.registry.get_version(version)
        tags = {k: v for k, v in info.tags.items() if k in _TAGS_KEPT}
        cached = self._verified_dirs.get(version)
        checked = None
        if cached is not None and cached[1] == tags and cached[0].is_dir():
            target = cached[0]
            how = "verified earlier in this process; verified again"
        else:
            target, checked = self._download(version, info, tags)
            how = "downloaded and verified"
        record = {
            "model": self.model, "alias": self.alias, "version": version, "path": str(target.relative_to(self.run_dir.path)),
            "tags": tags, "move": dict(self.move or {}), "verified_at": time.time(), "seq": self._seq + 1,
        }
        loaded = load_verified(target, version_info(version, tags, self.model), self.keyring, model=self.model,
                               alias=self.alias, record=record, checked_field_size=checked)
        record["field_size"] = loaded.field_size
        record["action"] = loaded.action
        self._seq += 1
        if self.on_publish is not None:
            self.on_publish(loaded)
        write_json(self.run_dir.current, record)
        self._verified_dirs[version] = (target, tags)
        self.published = record
        self.counters["versions_published"] += 1
        self._prune(keep=target)
        log.info("serving %s version %s (alias %s; %s in %.2f s: signature key %s..., checkpoint SHA-256 %s...)",
                 self.model, version, self.alias, how, time.monotonic() - started,
                 tags.get(TAG_SIGNATURE_KEY, "?")[:12], tags.get(TAG_SHA256, "?")[:12])
        return record

    def _download(self, version: int, info: Any, tags: dict[str, str]) -> tuple[Path, int]:
        """The version's model directory, as the registry has it, into the run folder; verified
        files only ever leave staging/ by a rename."""
        staging = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=self.run_dir.staging))
        try:
            with self.registry.model_files(version) as (_, model_dir):
                shutil.copytree(model_dir, staging / "model")
            # MLflow 3.17's `mlflow.pyfunc.load_model("models:/...")` writes this file into the
            # version's directory of a *local* artifact store (the embedded store): it is no file
            # of the model and not signed. Our copy drops it, and must then match the signature.
            meta = staging / "model" / MLFLOW_REGISTERED_META
            if meta.is_file():
                meta.unlink()
                log.info("%s version %s: dropped %s from the copy (MLflow's load_model writes it into local "
                         "artifact stores; it is not a signed file of the model)", self.model, version, MLFLOW_REGISTERED_META)
            # Checked here before it goes anywhere near versions/ (and again when loaded).
            from .verify import check_model_directory

            field_size = check_model_directory(staging / "model", version_info(version, tags, self.model),
                                               self.keyring, f"{self.model} version {version}")
            target = self.run_dir.versions / f"v{version}-{tags.get(TAG_SIGNATURE_SHA256, 'unsigned')[:12]}"
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / "model", target)
            return target, field_size
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _prune(self, keep: Path) -> None:
        """Keep the published directory and the most recent others (rollbacks), up to KEEP_VERSIONS."""
        by_age = sorted((p for p in self.run_dir.versions.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                        reverse=True)
        kept = [keep] + [p for p in by_age if p != keep][: KEEP_VERSIONS - 1]
        for path in by_age:
            if path not in kept:
                shutil.rmtree(path, ignore_errors=True)
        self._verified_dirs = {v: entry for v, entry in self._verified_dirs.items() if entry[0] in kept}

    # Status --------------------------------------------------------------------------------

    def state(self) -> str:
        if self.published is not None:
            return "degraded" if self.problem else "ok"
        if self.last_check_at is None:
            return "starting"
        if self.alias_seen and self.alias_version is None and self.last_ok_check_at == self.last_check_at:
            return "waiting"
        return "unavailable" if self.problem else "starting"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state(),
            "reason": self.problem,
            "model": self.model,
            "alias": self.alias,
            "alias_version": self.alias_version,
            "published_version": self.published["version"] if self.published else None,
            "alias_move": self.move,
            "last_check_at": self.last_check_at,
            "last_ok_check_at": self.last_ok_check_at,
            "poll_seconds": self.poll_seconds,
            "refused": {str(v): r.reason for v, r in sorted(self.refused.items())},
            "counters": dict(self.counters),
            "pid": os.getpid(),
            "updated_at": time.time(),
        }

    def write_status(self) -> None:
        try:
            write_json(self.run_dir.status, self.status())
        except OSError as exc:
            log.error("cannot write %s: %s", self.run_dir.status, exc)


def _v(version: int | None) -> str:
    return "no version" if version is None else f"version {version}"


def _iso(timestamp: float | None) -> str:
    import datetime as dt

    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat(timespec="seconds")
