"""Which backups to keep: the original's disaster-recovery policy, as a pure function.

    plan = plan_retention(backups, now)          # -> RetentionPlan(keep={id: [reasons]}, delete=[ids])

Grandfather-father-son. Each tier has a window ending at `now` and a bucket size:

    hourly   the last `hourly_hours` hours (168: 7 days)      one per UTC hour
    daily    the last `daily_days` days (30)                   one per UTC day
    weekly   the last `weekly_weeks` weeks (26)                one per ISO week (Monday-Sunday, UTC)
    monthly  the last `monthly_months` calendar months (24)    one per UTC calendar month

A window is half-open: a backup is inside it when `now - window < created_at <= now`, so a backup
exactly 7 days old has left the hourly tier (the daily tier still holds it if it represents its
day). Months are calendar months: 24 months before 2026-11-29T16:30 is 2024-11-29T16:30, and the
day is clamped to the month's length (one month before 2026-03-31 is 2026-02-28).

Of the backups inside a tier's window, each bucket keeps one representative: its newest
*verified* backup if the bucket has any, otherwise its newest backup. (A verified backup is one
the integrity check has passed; preferring it means a kept day or week can actually be restored,
at the price of keeping a slightly older backup for that bucket.) Ties in `created_at` are broken
by `backup_id`, so the plan is deterministic.

On top of the tiers:
- the newest verified backup is never deleted, whatever its age ("newest verified");
- a backup dated after `now` (clock skew) is kept and never counted in any bucket
  ("newer than now (clock skew)");
- everything else goes to `delete`, oldest first.

Note: if the backups stopped long ago and none is verified, the plan deletes them all once they
are older than every window; the newest-verified rule is the only one that ignores age.

All times are bucketed in UTC; `created_at` and `now` must be timezone-aware.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

UTC = dt.timezone.utc

NEWEST_VERIFIED = "newest verified"
CLOCK_SKEW = "newer than now (clock skew)"


@dataclass(frozen=True)
class RetentionPolicy:
    hourly_hours: int = 24 * 7
    daily_days: int = 30
    weekly_weeks: int = 26
    monthly_months: int = 24

    def __post_init__(self) -> None:
        for name in ("hourly_hours", "daily_days", "weekly_weeks", "monthly_months"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"RetentionPolicy.{name} must be a whole number >= 0, not {value!r}")


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    created_at: dt.datetime
    verified: bool


@dataclass
class RetentionPlan:
    """`keep`: backup id -> why (oldest first); `delete`: backup ids, oldest first."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


def plan_retention(
    backups: Sequence[BackupInfo], now: dt.datetime, policy: RetentionPolicy = RetentionPolicy()
) -> RetentionPlan:
    """Split `backups` into what the policy keeps (with reasons) and what it deletes."""
    now = _utc(now, "now")
    seen: set[str] = set()
    entries: list[tuple[dt.datetime, str, bool]] = []
    for backup in backups:
        if backup.backup_id in seen:
            raise ValueError(f"backup id {backup.backup_id!r} appears more than once")
        seen.add(backup.backup_id)
        when = _utc(backup.created_at, f"created_at of backup {backup.backup_id!r}")
        entries.append((when, backup.backup_id, bool(backup.verified)))
    entries.sort()  # oldest first; ties by id

    reasons: dict[str, list[str]] = {backup_id: [] for _, backup_id, _ in entries}
    past = [entry for entry in entries if entry[0] <= now]
    for when, backup_id, _ in entries:
        if when > now:
            reasons[backup_id].append(CLOCK_SKEW)

    tiers: list[tuple[str, dt.datetime, Callable[[dt.datetime], Hashable], Callable[[dt.datetime], str]]] = [
        ("hourly", now - dt.timedelta(hours=policy.hourly_hours), _hour, lambda t: t.strftime("%Y-%m-%dT%H")),
        ("daily", now - dt.timedelta(days=policy.daily_days), _day, lambda t: t.strftime("%Y-%m-%d")),
        ("weekly", now - dt.timedelta(weeks=policy.weekly_weeks), _week, _week_label),
        ("monthly", _months_before(now, policy.monthly_months), _month, lambda t: t.strftime("%Y-%m")),
    ]
    for tier, start, bucket_of, label in tiers:
        chosen: dict[Hashable, tuple[bool, dt.datetime, str]] = {}
        for when, backup_id, verified in past:
            if when <= start:
                continue
            key = bucket_of(when)
            candidate = (verified, when, backup_id)  # verified first, then newest, then id
            if key not in chosen or candidate > chosen[key]:
                chosen[key] = candidate
        for _, when, backup_id in chosen.values():
            reasons[backup_id].append(f"{tier} {label(when)}")

    verified = [entry for entry in entries if entry[2]]
    if verified:
        reasons[verified[-1][1]].append(NEWEST_VERIFIED)

    plan = RetentionPlan()
    for _, backup_id, _ in entries:
        if reasons[backup_id]:
            plan.keep[backup_id] = reasons[backup_id]
        else:
            plan.delete.append(backup_id)
    return plan


def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got the naive {value.isoformat()}")
    return value.astimezone(UTC)


def _hour(t: dt.datetime) -> Hashable:
    return (t.year, t.month, t.day, t.hour)


def _day(t: dt.datetime) -> Hashable:
    return t.date()


def _week(t: dt.datetime) -> Hashable:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _week_label(t: dt.datetime) -> str:
    iso = t.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _month(t: dt.datetime) -> Hashable:
    return (t.year, t.month)


def _months_before(t: dt.datetime, months: int) -> dt.datetime:
    """`t` moved back by whole calendar months, the day clamped to the month's length."""
    index = t.year * 12 + (t.month - 1) - months
    year, month = divmod(index, 12)
    month += 1
    if year < dt.MINYEAR:
        return dt.datetime.min.replace(tzinfo=UTC)
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


__all__ = ["BackupInfo", "CLOCK_SKEW", "NEWEST_VERIFIED", "RetentionPlan", "RetentionPolicy", "plan_retention"]
