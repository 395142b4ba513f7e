"""Retention arithmetic: restic's keep rules per collection, in a time zone, and the
guards that keep the last good copy whatever the policy says."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.jobs import Run
from shared.domain.retention import Backup, Policy, decide
from shared.service.verify import unverified

UTC = timezone.utc
SHOP = ("shop", "orders")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def history(*times: str, collection: tuple[str, str] = SHOP, **flags: set[str]) -> list[Backup]:
    return [Backup(backup_id=t, collection=collection, taken_at=at(t),
                   suspect=t in flags.get("suspect", set()),
                   done=t not in flags.get("failed", set()),
                   running=t in flags.get("running", set()),
                   restoring=t in flags.get("restoring", set()),
                   unverified=t in flags.get("unverified", set())) for t in times]


def kept(backups: list[Backup], policy: Policy) -> list[str]:
    return sorted((d.backup.backup_id for d in decide(backups, policy) if d.keep), reverse=True)


@pytest.mark.parametrize(("policy", "times", "expected"), [
    # keep_last: the n newest
    (Policy(keep_last=2, time_zone="UTC"),
     ["2026-11-01T02:00", "2026-11-02T02:00", "2026-11-03T02:00"],
     ["2026-11-03T02:00", "2026-11-02T02:00"]),
    # keep_daily: the newest of each day, for the last n days that have a backup
    (Policy(keep_daily=2, time_zone="UTC"),
     ["2026-11-01T02:00", "2026-11-03T01:00", "2026-11-03T23:00", "2026-11-05T02:00"],
     ["2026-11-05T02:00", "2026-11-03T23:00"]),
    # keep_weekly: ISO weeks (Mon 2026-11-02 starts week 45; Sun 2026-11-01 ends week 44)
    (Policy(keep_weekly=2, time_zone="UTC"),
     ["2026-11-01T10:00", "2026-11-02T10:00", "2026-11-08T10:00", "2026-11-09T10:00"],
     ["2026-11-09T10:00", "2026-11-08T10:00"]),
    # ISO week 1 of 2027 starts on Mon 2027-01-04; Fri 2027-01-01 is in week 53 of 2026
    (Policy(keep_weekly=2, time_zone="UTC"),
     ["2026-12-28T10:00", "2027-01-01T10:00", "2027-01-04T10:00"],
     ["2027-01-04T10:00", "2027-01-01T10:00"]),
    # keep_monthly: calendar months, newest of each
    (Policy(keep_monthly=3, time_zone="UTC"),
     ["2026-08-31T10:00", "2026-09-01T10:00", "2026-09-30T10:00", "2026-11-15T10:00"],
     ["2026-11-15T10:00", "2026-09-30T10:00", "2026-08-31T10:00"]),
    # rules combine: last 1 + daily 2
    (Policy(keep_last=1, keep_daily=2, time_zone="UTC"),
     ["2026-11-01T02:00", "2026-11-01T03:00", "2026-11-02T02:00", "2026-11-02T03:00"],
     ["2026-11-02T03:00", "2026-11-01T03:00"]),
])
def test_restic_rules(policy: Policy, times: list[str], expected: list[str]) -> None:
    assert kept(history(*times), policy) == expected


def test_days_are_counted_in_the_policy_time_zone() -> None:
    # 16:30 and 17:30 UTC on Nov 1 are the same UTC day but two days in Shanghai (UTC+8)
    times = ["2026-11-01T15:30", "2026-11-01T16:30"]
    assert kept(history(*times), Policy(keep_daily=2, time_zone="UTC")) == ["2026-11-01T16:30"]
    assert kept(history(*times), Policy(keep_daily=2)) == ["2026-11-01T16:30", "2026-11-01T15:30"]


def test_months_are_counted_in_the_policy_time_zone() -> None:
    # 2026-10-31T20:00Z is already November in Shanghai
    times = ["2026-10-31T10:00", "2026-10-31T20:00"]
    assert kept(history(*times), Policy(keep_monthly=2, time_zone="UTC")) == ["2026-10-31T20:00"]
    assert kept(history(*times), Policy(keep_monthly=2)) == ["2026-10-31T20:00", "2026-10-31T10:00"]


def test_collections_are_decided_apart() -> None:
    backups = [*history("2026-11-01T02:00", "2026-11-02T02:00"),
               *history("2026-11-01T02:00", collection=("shop", "users"))]
    decisions = decide(backups, Policy(keep_last=1))
    assert {(d.backup.collection, d.backup.backup_id) for d in decisions if d.keep} == {
        (SHOP, "2026-11-02T02:00"), (("shop", "users"), "2026-11-01T02:00")}


def test_suspect_backups_do_not_count_and_keep_everything_older() -> None:
    times = ["2026-11-01T02:00", "2026-11-02T02:00", "2026-11-03T02:00", "2026-11-04T02:00"]
    backups = history(*times, suspect={"2026-11-03T02:00"})
    decisions = {d.backup.backup_id: d for d in decide(backups, Policy(keep_last=1))}
    assert decisions["2026-11-04T02:00"].keep  # the newest good one
    assert decisions["2026-11-03T02:00"].reasons == ["suspect: kept until acknowledged"]
    assert decisions["2026-11-02T02:00"].reasons == ["a newer backup is suspect"]
    assert decisions["2026-11-01T02:00"].keep


def test_failed_backups_go_and_never_take_a_slot() -> None:
    backups = history("2026-11-01T02:00", "2026-11-02T02:00", failed={"2026-11-02T02:00"})
    assert kept(backups, Policy(keep_last=1)) == ["2026-11-01T02:00"]


def test_a_backup_whose_verify_failed_never_takes_a_slot_from_a_verified_one() -> None:
    """keep_last 1, and the newest backup's verify failed: the one before is still the
    newest good backup; the failed one stays until a newer good one exists."""
    times = ["2026-11-01T02:00", "2026-11-02T02:00", "2026-11-03T02:00"]
    backups = history(*times, unverified={"2026-11-03T02:00"})
    decisions = {d.backup.backup_id: d for d in decide(backups, Policy(keep_last=1))}
    assert decisions["2026-11-02T02:00"].reasons == ["last 1", "newest good backup"]
    assert decisions["2026-11-03T02:00"].reasons == [
        "its verify failed: kept until a newer good backup"]
    assert not decisions["2026-11-01T02:00"].keep
    newer = history(*times, "2026-11-04T02:00", unverified={"2026-11-03T02:00"})
    assert kept(newer, Policy(keep_last=1)) == ["2026-11-04T02:00"]


def test_running_and_restoring_backups_stay() -> None:
    backups = history("2026-11-01T02:00", "2026-11-02T02:00", "2026-11-03T02:00",
                      running={"2026-11-01T02:00"}, restoring={"2026-11-02T02:00"})
    assert kept(backups, Policy(keep_last=1)) == [
        "2026-11-03T02:00", "2026-11-02T02:00", "2026-11-01T02:00"]


def test_a_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="must keep something"):
        decide(history("2026-11-01T02:00"), Policy())


@st.composite
def histories(draw: st.DrawFn) -> list[Backup]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    backups = []
    for collection in [("a", "x"), ("a", "y"), ("b", "x")][: draw(st.integers(1, 3))]:
        offsets = draw(st.lists(st.integers(0, 400 * 24), min_size=0, max_size=40, unique=True))
        for hours in offsets:
            backups.append(Backup(
                backup_id=f"{collection}-{hours}", collection=collection,
                taken_at=start + timedelta(hours=hours),
                done=draw(st.booleans()) or draw(st.booleans()),
                suspect=draw(st.integers(0, 9)) == 0,
                running=draw(st.integers(0, 19)) == 0,
                restoring=draw(st.integers(0, 19)) == 0,
                unverified=draw(st.integers(0, 9)) == 0))
    return backups


policies = st.builds(Policy, keep_last=st.integers(0, 5), keep_daily=st.integers(0, 10),
                     keep_weekly=st.integers(0, 6), keep_monthly=st.integers(0, 13),
                     time_zone=st.sampled_from(["Asia/Shanghai", "UTC", "America/New_York"])
                     ).filter(Policy.keeps_anything)


@settings(max_examples=100, deadline=None)
@given(histories(), policies)
def test_the_newest_good_backup_of_every_collection_always_survives(
        backups: list[Backup], policy: Policy) -> None:
    decisions = decide(backups, policy)
    assert len(decisions) == len(backups)
    for collection in {b.collection for b in backups}:
        good = [b for b in backups if b.collection == collection and b.good]
        if good:
            newest = max(good, key=lambda b: (b.taken_at, b.backup_id))
            assert next(d for d in decisions if d.backup is newest).keep
    for decision in decisions:
        backup = decision.backup
        if backup.running or backup.restoring or backup.suspect:
            assert decision.keep
        newer_suspect = any(b.suspect and b.collection == backup.collection
                            and (b.taken_at, b.backup_id) > (backup.taken_at, backup.backup_id)
                            for b in backups)
        if newer_suspect:
            assert decision.keep
        newer_good = any(b.good and b.collection == backup.collection
                         and (b.taken_at, b.backup_id) > (backup.taken_at, backup.backup_id)
                         for b in backups)
        if backup.unverified and not newer_good:
            assert decision.keep
        if not decision.keep:
            assert not backup.running and not backup.restoring


@settings(max_examples=60, deadline=None)
@given(histories(), policies)
def test_keeping_is_stable_when_pruned_again(backups: list[Backup], policy: Policy) -> None:
    """Pruning twice deletes nothing the first prune kept: what a policy keeps, it keeps
    again once the rest is gone (so two prunes at once cannot disagree destructively)."""
    first = {d.backup.backup_id for d in decide(backups, policy) if d.keep}
    survivors = [b for b in backups if b.backup_id in first]
    second = {d.backup.backup_id for d in decide(survivors, policy) if d.keep}
    assert second == first


def test_a_later_verify_clears_what_it_checked_and_adds_what_it_found() -> None:
    def run(**summary: dict[str, Any]) -> Run:
        return Run(run_id="r", idempotency_key="k", trigger="test", sources=["shop"],
                   created_at=at("2026-11-01T02:00"), summary=summary)

    after_run = {"ok": False, "checked": ["shop/orders", "shop/users"], "failed": ["shop/orders"]}
    assert unverified(run(verify=after_run)) == {"shop/orders"}
    orders_ok = {"ok": True, "checked": ["shop/orders"], "failed": []}
    assert unverified(run(verify=after_run, last_verify=orders_ok)) == set()
    users_bad = {"ok": False, "checked": ["shop/users"], "failed": ["shop/users"]}
    assert unverified(run(verify=after_run, last_verify=users_bad)) == {"shop/orders", "shop/users"}
    assert unverified(run(verify={"ok": False, "problems": ["from before the lists"]})) == set()
    assert unverified(run()) == set()
