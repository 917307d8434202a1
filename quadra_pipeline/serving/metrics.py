"""Counters for `/metrics`, in Prometheus' text format (no client library needed).

Each serving process counts its own requests (by endpoint and status), the rows it scored, the
time `/invocations` took (a histogram) and its model swaps, and writes them to the run folder
(`metrics/<pid>.json`) about once a second; `/metrics`, answered by whichever worker, sums every
worker's file with its own live counts, and adds the follower's (alias checks, moves, refused
versions) from `status.json`. So one scrape sees the whole service whatever the worker count.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import defaultdict
from typing import Any

from .cache import RunDir, read_json, write_json

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PREFIX = "quadra_serving"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.rows = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds_sum = 0.0
        self.count = 0
        self._written: str | None = None

    def request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def invocation(self, seconds: float, rows: int) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.seconds_sum += seconds
        self.count += 1
        self.rows += rows

    def snapshot(self, holder: Any) -> dict[str, Any]:
        current = holder.current if holder is not None else None
        return {
            # A copy first (one C-level step): the event loop may add a key meanwhile.
            "requests": [[e, s, n] for (e, s), n in sorted(dict(self.requests).items())],
            "rows": self.rows,
            "buckets": list(self.buckets),
            "seconds_sum": self.seconds_sum,
            "count": self.count,
            "swaps": getattr(holder, "swaps", 0),
            "load_failures": getattr(holder, "load_failures", 0),
            "version": current.version if current is not None else None,
        }

    def write(self, run_dir: RunDir, holder: Any) -> None:
        data = self.snapshot(holder)
        text = json.dumps(data, sort_keys=True)
        if text != self._written:
            write_json(run_dir.metrics / f"{os.getpid()}.json", data)
            self._written = text


def render(run_dir: RunDir, own: dict[str, Any], status: dict[str, Any] | None) -> str:
    """Prometheus text exposition of every worker's counters (own live, the others' last write)."""
    workers = {str(os.getpid()): own}
    for path in sorted(run_dir.metrics.glob("*.json")):
        if path.stem != str(os.getpid()):
            data = read_json(path)
            if isinstance(data, dict):
                workers[path.stem] = data
    requests: dict[tuple[str, int], int] = defaultdict(int)
    buckets = [0] * (len(BUCKETS) + 1)
    total = {"rows": 0, "seconds_sum": 0.0, "count": 0, "swaps": 0, "load_failures": 0}
    for data in workers.values():
        for endpoint, status_code, n in data.get("requests", []):
            requests[(endpoint, int(status_code))] += int(n)
        for i, n in enumerate(data.get("buckets", [])[: len(buckets)]):
            buckets[i] += int(n)
        for key in total:
            total[key] += data.get(key, 0)
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")
        for labels, value in samples:
            lines.append(f"{PREFIX}_{name}{labels} {value}")

    metric("requests_total", "counter", "Requests answered, by endpoint and HTTP status.",
           [(f'{{endpoint="{e}",code="{s}"}}', n) for (e, s), n in sorted(requests.items())])
    cumulative, samples = 0, []
    for bound, n in zip([*map(str, BUCKETS), "+Inf"], buckets):
        cumulative += n
        samples.append((f'_bucket{{le="{bound}"}}', cumulative))
    lines.append(f"# HELP {PREFIX}_invocation_seconds Time to answer POST /invocations (200s), in the handler.")
    lines.append(f"# TYPE {PREFIX}_invocation_seconds histogram")
    lines.extend(f"{PREFIX}_invocation_seconds{labels} {value}" for labels, value in samples)
    lines.append(f"{PREFIX}_invocation_seconds_sum {total['seconds_sum']:.6f}")
    lines.append(f"{PREFIX}_invocation_seconds_count {total['count']}")
    metric("rows_total", "counter", "Rows scored.", [("", total["rows"])])
    metric("model_swaps_total", "counter", "Versions a worker verified, loaded and swapped in.", [("", total["swaps"])])
    metric("model_load_failures_total", "counter", "Published versions a worker refused to load.",
           [("", total["load_failures"])])
    metric("worker_model_version", "gauge", "The version each live worker answers with (-1: none yet).",
           [(f'{{worker="{pid}"}}', data.get("version") if data.get("version") is not None else -1)
            for pid, data in sorted(workers.items()) if _alive(pid)])
    status = status or {}
    counters = status.get("counters") or {}
    state = status.get("state") or "starting"
    metric("degraded", "gauge", "1 while the service serves an older version than the alias names, or none.",
           [("", 0 if state in ("ok", "waiting") else 1)])
    metric("alias_version", "gauge", "The version the alias names at the last look (-1: none).",
           [("", status.get("alias_version") if status.get("alias_version") is not None else -1)])
    for key, help_text in (("alias_checks", "Looks at the alias in the registry."),
                           ("alias_check_errors", "Looks at the alias that failed (registry unreachable)."),
                           ("alias_moves", "Alias moves seen."),
                           ("versions_published", "Versions verified and published to the workers."),
                           ("versions_refused", "Versions refused (signature, SHA-256, signature of the model, load)."),
                           ("versions_preverified", "Challengers downloaded and verified ahead of a promotion."),
                           ("webhook_wakeups", "Verified MLflow webhooks that made the follower look at once.")):
        metric(f"{key}_total", "counter", help_text, [("", int(counters.get(key, 0)))])
    metric("last_alias_check_timestamp_seconds", "gauge", "When the registry last answered a look at the alias.",
           [("", f"{status.get('last_ok_check_at') or 0:.3f}")])
    lines.append("")
    return "\n".join(lines)


def _alive(pid: str) -> bool:
    """A worker uvicorn replaced keeps its counters in the sums, not a version in the gauge."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
