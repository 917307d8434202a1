"""The model one serving process answers with, swapped atomically when the follower publishes.

A request reads `holder.current` once and uses that `LoadedModel` to the end: the swap is one
reference assignment (under a lock that orders writers only), so a request in flight finishes
on the old version while the next one gets the new, and no request ever sees a version half
loaded or none. A watcher thread looks at `current.json` every 0.2 s (a read of a few hundred
bytes); when it names another version it verifies the files again in this process (signature,
checkpoint SHA-256, MLmodel signature) and loads them, and only then swaps. A version that
fails here leaves the current one answering and is reported on `/health`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..keys import Keyring
from .cache import RunDir
from .verify import LoadedModel, VersionRefused, load_verified, version_info

log = logging.getLogger("quadra_pipeline.serving")

WATCH_SECONDS = 0.2


class ModelHolder:
    def __init__(self, run_dir: RunDir, keyring: Keyring, *, model: str, alias: str, on_tick=None) -> None:
        self.run_dir = run_dir
        self.keyring = keyring
        self.model = model
        self.alias = alias
        self.current: LoadedModel | None = None
        self.problem: str | None = None  # this process's own (a published version that failed to load here)
        self.swaps = 0
        self.load_failures = 0
        self._lock = threading.Lock()
        self._seen_seq: int | None = None
        self._failed: tuple[int, int] | None = None  # (seq, version) that failed here: not retried
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_tick = on_tick

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="quadra-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the watcher never dies
                log.exception("the model watcher failed")
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:  # noqa: BLE001
                    log.exception("the metrics writer failed")
            self._stopping.wait(WATCH_SECONDS)

    def offer(self, loaded: LoadedModel) -> None:
        """Take a model the follower of this process verified and loaded (one worker): the same
        swap as `refresh`, without loading it a second time."""
        with self._lock:
            previous, self.current = self.current, loaded
            self._seen_seq = loaded.record.get("seq")
            self.problem = None
            self.swaps += 1
        log.info("worker now answers with %s version %s (was %s; verified and loaded by the follower)", self.model,
                 loaded.version, _label(previous))

    def refresh(self) -> bool:
        """Load what `current.json` names if it is new here; True if this swapped."""
        record = self.run_dir.read_current()
        if not record or record.get("seq") == self._seen_seq:
            return False
        seq, version = record.get("seq"), int(record["version"])
        if self._failed == (seq, version):
            return False
        current = self.current
        if current is not None and current.version == version and current.record.get("path") == record.get("path"):
            self._seen_seq = seq  # the same files (a rollback to what this process already serves)
            with self._lock:
                self.current = _with_record(current, record)
            return False
        started = time.monotonic()
        try:
            loaded = load_verified(self.run_dir.path / record["path"], version_info(version, record.get("tags", {}), self.model),
                                   self.keyring, model=self.model, alias=self.alias, record=record)
        except VersionRefused as exc:
            self.load_failures += 1
            self._failed = (seq, version)
            self.problem = f"{exc}; this worker serves {_label(self.current)}"
            log.error("worker could not take %s version %s: %s", self.model, version, exc)
            return False
        with self._lock:
            previous, self.current = self.current, loaded
            self._seen_seq = seq
            self.problem = None
            self.swaps += 1
        log.info("worker now answers with %s version %s (was %s; verified and loaded in %.2f s)", self.model, version,
                 _label(previous), time.monotonic() - started)
        return True


def _with_record(loaded: LoadedModel, record: dict[str, Any]) -> LoadedModel:
    import dataclasses

    return dataclasses.replace(loaded, record=dict(record))


def _label(loaded: LoadedModel | None) -> str:
    return "nothing" if loaded is None else f"version {loaded.version}"


def path_of(run_dir: RunDir, record: dict[str, Any]) -> Path:
    return run_dir.path / record["path"]
