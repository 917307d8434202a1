"""`quadra exporter`'s collector: every scrape asks each source now, in parallel, within a deadline.

A source that raises, or does not answer within the deadline, is `quadra_source_up{source} 0`
and its error is logged (one line, no secret); the other sources' metrics are served as usual,
so a scrape never fails because one system is down. A source still busy from an earlier scrape
is waited for (never asked twice at once), so a hung database holds one thread, not one per
scrape. Metrics that need two sources (the newest good backup: Dagster's checks and the
repository) are served when both answered. The metrics and their meaning: deploy/prometheus/README.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..settings import Settings
from .sources import (
    BackupsSource,
    DagsterSource,
    MlflowSource,
    SourceError,
    SourceResult,
    StoreSource,
    good_backup_families,
)

log = logging.getLogger("quadra.exporter")

DEFAULT_DEADLINE_SECONDS = 8.0


class QuadraCollector(Collector):
    def __init__(self, sources: Sequence[Any], deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> None:
        self.sources = list(sources)
        self.deadline_seconds = deadline_seconds
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sources)), thread_name_prefix="quadra-source")
        self._inflight: dict[str, tuple[Future, float]] = {}
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> "QuadraCollector":
        timeout = max(1.0, deadline_seconds - 2.0)
        return cls([DagsterSource(), StoreSource(settings), BackupsSource(settings),
                    MlflowSource(settings, timeout_seconds=timeout)], deadline_seconds)

    def describe(self) -> Iterable[Any]:
        return []  # computed at scrape time only (registering must not query anything)

    def _submit(self, source: Any) -> tuple[Future, float]:
        with self._lock:
            running = self._inflight.get(source.name)
            if running is not None and not running[0].done():
                return running
            started = time.monotonic()
            future = self._pool.submit(self._timed, source)
            self._inflight[source.name] = (future, started)
            return future, started

    @staticmethod
    def _timed(source: Any) -> tuple[SourceResult, float]:
        started = time.monotonic()
        result = source.collect()
        return result, time.monotonic() - started

    def collect(self) -> Iterable[Any]:
        deadline = time.monotonic() + self.deadline_seconds
        futures = {source.name: self._submit(source) for source in self.sources}
        up = GaugeMetricFamily("quadra_source_up", "1 if the exporter could read this source at this scrape, else 0 "
                               "(the exporter's log says why).", labels=["source"])
        seconds = GaugeMetricFamily("quadra_source_scrape_duration_seconds", "How long reading this source took.",
                                    labels=["source"])
        results: dict[str, SourceResult] = {}
        for name, (future, started) in futures.items():
            try:
                result, took = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self._failed(name, f"no answer within {self.deadline_seconds:g} s (still busy for "
                                   f"{time.monotonic() - started:.0f} s)")
                up.add_metric([name], 0.0)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure of one source: up 0, never a failed scrape
                self._failed(name, describe_error(exc))
                up.add_metric([name], 0.0)
                continue
            if self._last_error.pop(name, None) is not None:
                log.info("source %s: readable again", name)
            results[name] = result
            up.add_metric([name], 1.0)
            seconds.add_metric([name], took)
            yield from result.families.metrics()
        if "dagster" in results and "backups" in results:
            yield from good_backup_families(results["dagster"], results["backups"]).metrics()
        yield up
        yield seconds

    def _failed(self, name: str, reason: str) -> None:
        log.warning("source %s is down: %s", name, reason)
        self._last_error[name] = reason

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def describe_error(exc: BaseException) -> str:
    """One line naming what failed, with any password in a URL masked."""
    from ..registry.errors import one_line

    if isinstance(exc, SourceError):
        return one_line(str(exc), limit=400)
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return one_line(f"{type(exc).__name__}: {text}", limit=400)


def registry_for(collector: QuadraCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
