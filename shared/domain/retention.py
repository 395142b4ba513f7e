"""Which backups a retention policy keeps: restic's `forget --keep-*` rules, computed per
collection, in the policy's time zone, over good backups only, plus the guards that
make retention safe to run unattended.

A backup is *good* when its job is done, its run has closed, it is not suspect, and no
verify of its run found its data wrong. The `keep_*` rules are
restic's (https://restic.readthedocs.io/en/stable/060_forget.html "Removing snapshots
according to a policy"): going from the newest good backup to the oldest, `keep_last n`
keeps the n newest; `keep_daily n` keeps the newest backup of each of the last n days
that have one (likewise ISO weeks for `keep_weekly`, calendar months for
`keep_monthly`). A backup kept by several rules is kept once, with every reason.

Never deleted, whatever the rules say:
- the newest good backup of each collection;
- every backup older than a suspect one of the same collection (until the suspect one
  is acknowledged, the older copies may be the last good data);
- suspect backups themselves (they are evidence until acknowledged);
- backups of a run still running, and backups being restored;
- a backup whose verify failed, while no newer good backup of its collection exists (it
  may hold data no good backup has); it never counts towards the `keep_*` rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Backup:
    """One collection's backup in one run, as retention sees it."""

    backup_id: str  # the job id
    collection: tuple[str, str]  # (source, collection)
    # Aware; when its export started, its run's start for a job with none (restic dates a
    # snapshot by its start): a nightly backup that ends after midnight is that night's.
    taken_at: datetime
    done: bool = True
    suspect: bool = False
    running: bool = False  # its run has not closed
    restoring: bool = False
    unverified: bool = False  # a verify of its run found its data wrong

    @property
    def good(self) -> bool:
        # A backup of a run still open has not had the check after its run: counted as
        # good, it could cost the last copy that check found right.
        return self.done and not self.suspect and not self.unverified and not self.running


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    time_zone: str = "Asia/Shanghai"

    def keeps_anything(self) -> bool:
        return any((self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly))


@dataclass
class Decision:
    backup: Backup
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


Bucket = Callable[[datetime, int], object]


def _rules(policy: Policy) -> list[tuple[str, int, Bucket]]:
    return [
        ("last", policy.keep_last, lambda moment, index: index),
        ("daily", policy.keep_daily, lambda moment, index: moment.date()),
        ("weekly", policy.keep_weekly, lambda moment, index: moment.isocalendar()[:2]),
        ("monthly", policy.keep_monthly, lambda moment, index: (moment.year, moment.month)),
    ]


def decide(backups: Iterable[Backup], policy: Policy) -> list[Decision]:
    """A decision for every backup, newest first within each collection."""
    if not policy.keeps_anything():
        raise ValueError("a retention policy must keep something: set keep_last, keep_daily, "
                         "keep_weekly or keep_monthly to at least 1")
    zone = ZoneInfo(policy.time_zone)
    by_collection: dict[tuple[str, str], list[Backup]] = {}
    for backup in backups:
        by_collection.setdefault(backup.collection, []).append(backup)
    decisions: list[Decision] = []
    for collection in sorted(by_collection):
        history = sorted(by_collection[collection], key=lambda b: (b.taken_at, b.backup_id),
                         reverse=True)
        decisions.extend(_decide_collection(history, policy, zone))
    return decisions


def _decide_collection(history: list[Backup], policy: Policy, zone: ZoneInfo) -> list[Decision]:
    decisions = [Decision(b) for b in history]
    good = [d for d in decisions if d.backup.good]
    for name, count, bucket in _rules(policy):
        left, last = count, None
        for index, decision in enumerate(good):
            if left <= 0:
                break
            value = bucket(decision.backup.taken_at.astimezone(zone), index)
            if value != last:
                decision.reasons.append(f"{name} {count - left + 1}")
                last, left = value, left - 1
    if good:
        good[0].reasons.append("newest good backup")
    newer_suspect = newer_good = False
    for decision in decisions:  # newest first
        backup = decision.backup
        if backup.suspect:
            decision.reasons.append("suspect: kept until acknowledged")
        elif newer_suspect:
            decision.reasons.append("a newer backup is suspect")
        if backup.unverified and not newer_good:
            decision.reasons.append("its verify failed: kept until a newer good backup")
        if backup.running:
            decision.reasons.append("its run is still running")
        if backup.restoring:
            decision.reasons.append("being restored")
        newer_suspect = newer_suspect or backup.suspect
        newer_good = newer_good or backup.good
    return decisions
