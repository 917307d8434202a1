"""The retention policy (hourly 7 d, daily 30 d, weekly 26 w, monthly 24 months) on synthetic timelines."""

from __future__ import annotations

import calendar
import datetime as dt
import random
import time

import pytest

from quadra_pipeline.backup.retention import (
    CLOCK_SKEW,
    NEWEST_VERIFIED,
    BackupInfo,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)

UTC = dt.timezone.utc
H = dt.timedelta(hours=1)
NOW = dt.datetime(2026, 11, 29, 16, 30, tzinfo=UTC)  # a Sunday afternoon
HOURLY_ONLY = RetentionPolicy(hourly_hours=168, daily_days=0, weekly_weeks=0, monthly_months=0)
DAILY_ONLY = RetentionPolicy(hourly_hours=0, daily_days=30, weekly_weeks=0, monthly_months=0)
WEEKLY_ONLY = RetentionPolicy(hourly_hours=0, daily_days=0, weekly_weeks=26, monthly_months=0)
MONTHLY_ONLY = RetentionPolicy(hourly_hours=0, daily_days=0, weekly_weeks=0, monthly_months=24)


def info(when: dt.datetime, verified: bool = False, backup_id: str | None = None) -> BackupInfo:
    return BackupInfo(backup_id or when.strftime("%Y%m%dT%H%M%S"), when, verified)


def hourly_timeline(end: dt.datetime, hours: int, verified=lambda t: False) -> list[BackupInfo]:
    """One backup per hour at :00, the newest at `end`, `hours` of them."""
    return [info(end - k * H, verified(end - k * H)) for k in range(hours)]


def expected_kept_times(times: list[dt.datetime], now: dt.datetime) -> set[dt.datetime]:
    """Independent closed form for an unbroken hourly timeline (all unverified): each bucket's
    newest backup is its last hour (23:00 of a day, Sunday 23:00 of a week, 23:00 of the last
    day of a month), or the newest backup of all for the current bucket."""
    first, last = min(times), max(times)
    keep = {t for t in times if t > now - dt.timedelta(hours=168)}

    def add(bucket_end: dt.datetime, start: dt.datetime) -> None:
        rep = min(last, bucket_end)
        if rep > start and rep >= first:
            keep.add(rep)

    start = now - dt.timedelta(days=30)
    day = start.date()
    while day <= now.date():
        add(dt.datetime(day.year, day.month, day.day, 23, tzinfo=UTC), start)
        day += dt.timedelta(days=1)

    start = now - dt.timedelta(weeks=26)
    monday = start.date() - dt.timedelta(days=start.weekday())
    while monday <= now.date():
        sunday = monday + dt.timedelta(days=6)
        add(dt.datetime(sunday.year, sunday.month, sunday.day, 23, tzinfo=UTC), start)
        monday += dt.timedelta(weeks=1)

    start = now.replace(year=now.year - 2)  # 24 calendar months (no Feb 29 here)
    year, month = start.year, start.month
    while (year, month) <= (now.year, now.month):
        last_day = calendar.monthrange(year, month)[1]
        add(dt.datetime(year, month, last_day, 23, tzinfo=UTC), start)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keep


# The big timeline ---------------------------------------------------------------------------


def test_two_years_of_hourly_backups() -> None:
    backups = hourly_timeline(NOW.replace(minute=0), 2 * 365 * 24)  # 17,520 backups
    assert len(backups) == 17_520
    started = time.perf_counter()
    plan = plan_retention(backups, NOW)
    seconds = time.perf_counter() - started

    by_time = {b.created_at: b.backup_id for b in backups}
    expected = expected_kept_times(list(by_time), NOW)
    assert set(plan.keep) == {by_time[t] for t in expected}
    # 168 hourly + 30/31 daily + 26/27 weekly + 24/25 monthly, minus the overlaps.
    assert len(plan.keep) == len(expected)
    assert 168 + 23 + 21 + 23 <= len(plan.keep) <= 168 + 31 + 27 + 25
    assert len(plan.keep) + len(plan.delete) == len(backups)
    assert set(plan.keep).isdisjoint(plan.delete)
    assert seconds < 2, f"planning took {seconds:.2f} s"

    hourly = [b for b, why in plan.keep.items() if any(r.startswith("hourly ") for r in why)]
    daily = [b for b, why in plan.keep.items() if any(r.startswith("daily ") for r in why)]
    weekly = [b for b, why in plan.keep.items() if any(r.startswith("weekly ") for r in why)]
    monthly = [b for b, why in plan.keep.items() if any(r.startswith("monthly ") for r in why)]
    assert len(hourly) == 168
    assert len(daily) == 31  # 30 whole days plus the partial day at each end of the window
    assert len(weekly) == 27
    assert len(monthly) == 25
    print(f"\n2 years hourly: {len(backups)} backups -> keep {len(plan.keep)} in {seconds * 1000:.0f} ms")


def test_two_years_all_verified_keeps_the_same_set() -> None:
    backups = hourly_timeline(NOW.replace(minute=0), 2 * 365 * 24, verified=lambda t: True)
    plan = plan_retention(backups, NOW)
    unverified = plan_retention([BackupInfo(b.backup_id, b.created_at, False) for b in backups], NOW)
    assert set(plan.keep) == set(unverified.keep)
    newest = max(backups, key=lambda b: b.created_at).backup_id
    assert plan.keep[newest] == [
        "hourly 2026-11-29T16", "daily 2026-11-29", "weekly 2026-W48", "monthly 2026-11", NEWEST_VERIFIED,
    ]


def test_delete_is_oldest_first_and_keep_is_chronological() -> None:
    backups = hourly_timeline(NOW.replace(minute=0), 60 * 24)
    plan = plan_retention(backups, NOW)
    when = {b.backup_id: b.created_at for b in backups}
    assert [when[i] for i in plan.delete] == sorted(when[i] for i in plan.delete)
    assert [when[i] for i in plan.keep] == sorted(when[i] for i in plan.keep)


# Newest verified ----------------------------------------------------------------------------


def test_newest_verified_is_kept_even_three_years_old() -> None:
    old = NOW - dt.timedelta(days=3 * 365)
    verified = info(old, verified=True, backup_id="old-verified")
    older = info(old - H, backup_id="older-unverified")
    newer_but_old = info(old + dt.timedelta(days=1), backup_id="newer-unverified")
    recent = hourly_timeline(NOW.replace(minute=0), 48)  # all unverified
    plan = plan_retention([*recent, verified, older, newer_but_old], NOW)
    assert plan.keep["old-verified"] == [NEWEST_VERIFIED]
    assert plan.delete[:2] == ["older-unverified", "newer-unverified"]
    assert all(b.backup_id in plan.keep for b in recent)


def test_only_the_newest_verified_is_protected() -> None:
    a = info(NOW - dt.timedelta(days=1000), True, "a")
    b = info(NOW - dt.timedelta(days=900), True, "b")
    plan = plan_retention([a, b], NOW)
    assert plan.keep == {"b": [NEWEST_VERIFIED]}
    assert plan.delete == ["a"]


def test_no_verified_backup_and_everything_old_deletes_everything() -> None:
    old = [info(NOW - dt.timedelta(days=1000 + d)) for d in range(3)]
    plan = plan_retention(old, NOW)
    assert plan.keep == {}
    assert len(plan.delete) == 3


# Bucket representatives ---------------------------------------------------------------------


def test_a_bucket_prefers_its_newest_verified_backup() -> None:
    day = dt.datetime(2026, 11, 20, tzinfo=UTC)  # 9 days ago: only the daily tier
    early_ok = info(day.replace(hour=3), True, "03-verified")
    late_ok = info(day.replace(hour=9), True, "09-verified")
    newest = info(day.replace(hour=22), False, "22-unverified")
    recent = info(NOW - H, True, "recent")  # the newest verified overall
    plan = plan_retention([newest, early_ok, recent, late_ok], NOW, DAILY_ONLY)
    assert plan.keep["09-verified"] == ["daily 2026-11-20"]
    assert plan.delete == ["03-verified", "22-unverified"]


def test_a_bucket_without_verified_backups_keeps_its_newest() -> None:
    day = dt.datetime(2026, 11, 20, tzinfo=UTC)
    plan = plan_retention([info(day.replace(hour=h)) for h in (1, 12, 23)], NOW, DAILY_ONLY)
    assert list(plan.keep) == ["20261120T230000"]


def test_equal_times_are_broken_by_id() -> None:
    when = NOW - 2 * H
    plan = plan_retention([info(when, backup_id="b"), info(when, backup_id="a")], NOW, HOURLY_ONLY)
    assert list(plan.keep) == ["b"] and plan.delete == ["a"]


# Boundaries ---------------------------------------------------------------------------------


def test_exactly_seven_days_old_has_left_the_hourly_tier() -> None:
    edge = NOW - dt.timedelta(days=7)
    inside = edge + dt.timedelta(microseconds=1)
    plan = plan_retention([info(edge, backup_id="edge"), info(inside, backup_id="inside")], NOW, HOURLY_ONLY)
    assert plan.keep == {"inside": ["hourly 2026-11-22T16"]}
    assert plan.delete == ["edge"]
    # The daily tier still holds it (newest of its day inside 30 days).
    full = plan_retention([info(edge, backup_id="edge")], NOW)
    assert full.keep["edge"] == ["daily 2026-11-22", "weekly 2026-W47", "monthly 2026-11"]


def test_exactly_thirty_days_old_has_left_the_daily_tier() -> None:
    edge = NOW - dt.timedelta(days=30)
    plan = plan_retention([info(edge, backup_id="edge"), info(edge + H, backup_id="inside")], NOW, DAILY_ONLY)
    assert plan.keep == {"inside": ["daily 2026-10-30"]}
    assert plan.delete == ["edge"]


def test_week_boundaries_follow_iso_weeks() -> None:
    sunday_late = dt.datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC)  # end of 2026-W47
    monday_early = dt.datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # start of 2026-W48
    monday_w47 = dt.datetime(2026, 11, 16, 0, 0, tzinfo=UTC)
    plan = plan_retention(
        [info(sunday_late, backup_id="sun"), info(monday_early, backup_id="mon"), info(monday_w47, backup_id="mon47")],
        NOW,
        WEEKLY_ONLY,
    )
    assert plan.keep == {"sun": ["weekly 2026-W47"], "mon": ["weekly 2026-W48"]}
    assert plan.delete == ["mon47"]


def test_iso_week_spanning_new_year() -> None:
    now = dt.datetime(2027, 1, 3, 12, tzinfo=UTC)  # Sunday of 2026-W53
    dec31 = info(dt.datetime(2026, 12, 31, 10, tzinfo=UTC), backup_id="dec31")
    jan1 = info(dt.datetime(2027, 1, 1, 10, tzinfo=UTC), backup_id="jan1")
    plan = plan_retention([jan1, dec31], now, WEEKLY_ONLY)
    assert plan.keep == {"jan1": ["weekly 2026-W53"]}
    monthly = plan_retention([jan1, dec31], now, MONTHLY_ONLY)
    assert monthly.keep == {"dec31": ["monthly 2026-12"], "jan1": ["monthly 2027-01"]}


def test_weekly_window_is_26_weeks() -> None:
    edge = NOW - dt.timedelta(weeks=26)
    plan = plan_retention([info(edge, backup_id="edge"), info(edge + H, backup_id="inside")], NOW, WEEKLY_ONLY)
    assert list(plan.keep) == ["inside"] and plan.delete == ["edge"]


def test_monthly_window_is_calendar_months_clamped() -> None:
    now = dt.datetime(2026, 3, 31, 12, tzinfo=UTC)
    one_month = RetentionPolicy(hourly_hours=0, daily_days=0, weekly_weeks=0, monthly_months=1)
    edge = dt.datetime(2026, 2, 28, 12, tzinfo=UTC)  # one calendar month back, day clamped
    plan = plan_retention(
        [info(edge, backup_id="edge"), info(edge + dt.timedelta(seconds=1), backup_id="inside")], now, one_month
    )
    assert plan.keep == {"inside": ["monthly 2026-02"]}
    two_years = plan_retention(
        [info(dt.datetime(2024, 3, 31, 12, tzinfo=UTC), backup_id="edge24"),
         info(dt.datetime(2024, 3, 31, 13, tzinfo=UTC), backup_id="in24")],
        now,
        MONTHLY_ONLY,
    )
    assert list(two_years.keep) == ["in24"] and two_years.delete == ["edge24"]


def test_buckets_are_utc_whatever_the_input_offset() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2026, 11, 21, 1, 30, tzinfo=plus_two)  # 2026-11-20T23:30Z
    plan = plan_retention([info(local, backup_id="x")], NOW.astimezone(plus_two), DAILY_ONLY)
    assert plan.keep == {"x": ["daily 2026-11-20"]}


# Clock skew, empty, unsorted, bad input -----------------------------------------------------


def test_backup_newer_than_now_is_kept_without_taking_a_bucket() -> None:
    current = info(NOW - dt.timedelta(minutes=20), backup_id="current")
    future = info(NOW + dt.timedelta(minutes=10), backup_id="future")
    far_future = info(NOW + dt.timedelta(days=400), backup_id="far-future")
    plan = plan_retention([future, current, far_future], NOW)
    assert plan.keep["future"] == [CLOCK_SKEW]
    assert plan.keep["far-future"] == [CLOCK_SKEW]
    assert plan.keep["current"][0] == "hourly 2026-11-29T16"
    assert plan.delete == []


def test_empty() -> None:
    assert plan_retention([], NOW) == RetentionPlan(keep={}, delete=[])


def test_unsorted_input_gives_the_same_plan() -> None:
    backups = hourly_timeline(NOW.replace(minute=0), 90 * 24, verified=lambda t: t.hour == 5)
    shuffled = list(backups)
    random.Random(7).shuffle(shuffled)
    assert plan_retention(shuffled, NOW) == plan_retention(sorted(backups, key=lambda b: b.created_at), NOW)
    assert plan_retention(tuple(reversed(backups)), NOW) == plan_retention(backups, NOW)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([info(NOW)], NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="backup 'x'.*timezone-aware"):
        plan_retention([BackupInfo("x", NOW.replace(tzinfo=None), True)], NOW)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="'same' appears more than once"):
        plan_retention([info(NOW - H, backup_id="same"), info(NOW - 2 * H, backup_id="same")], NOW)


def test_policy_rejects_negative_windows() -> None:
    with pytest.raises(ValueError, match="daily_days"):
        RetentionPolicy(daily_days=-1)


def test_input_is_not_modified() -> None:
    backups = hourly_timeline(NOW.replace(minute=0), 10)
    copy = list(backups)
    plan_retention(backups, NOW)
    assert backups == copy
