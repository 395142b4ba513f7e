"""Verify: check a run's backups again, long after they were written, from the bucket
alone. For every backup object: its manifest exists and lists it, the object exists
with the recorded size, and (unless quick) streaming it back gives the recorded SHA-256
and record count; COS's CRC64 is compared with the manifest's where both exist.

Quick mode reads no object data: sizes (and CRC64) from a HEAD each. An object in the
archive class that COS will not read yet is not read by a full verify either: its size
and CRC64 are checked, and the report says it was not read, and why; it is no problem."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.domain.errors import StorageError
from shared.domain.jobs import Job, JobStatus, Run, RunStatus
from shared.domain.layout import run_folder, run_manifest_key
from shared.domain.records import counter_for
from shared.logs import redact
from shared.service.context import Context
from shared.service.outbox import claimed, keep_in_reach, settle, with_alert

READ_CHUNK = 1 << 20
ARCHIVED = frozenset({"ARCHIVE", "DEEP_ARCHIVE"})  # COS classes that must be restored to read
# COS answers a GET of an archived object that has no restored copy with a 403 that says
# InvalidObjectState (COS docs, Troubleshooting > "403 Error for COS Access", which shows it
# as <Code>AccessDenied</Code><Message>InvalidObjectState</Message>): either code is taken.
UNREADABLE = frozenset({"InvalidObjectState", "AccessDenied"})
# Reading one needs a restored copy first: POST Object restore
# (https://cloud.tencent.com/document/product/436/12633) or the console's 恢复.
NOT_READ = ("archived: restore from the archive class first ({storage_class}; COS console "
            "恢复, or POST Object restore, https://cloud.tencent.com/document/product/436/12633, "
            "then wait for the copy); its size and CRC64 were checked")


OutOfTime = Callable[[], bool]  # whether a verify must stop reading objects back
# How long a verify goes on quick-checking (a HEAD each) once `OutOfTime` said so (a full
# one stops reading back then; a quick one reads nothing anyway): with thousands of objects
# left those HEADs alone would outlast the margin its callers keep
# (close.VERIFY_MARGIN_SECONDS, 10 s) and SCF would end the invocation before the run
# closed or the API answered. What is left then is not checked (`unchecked`).
QUICK_CHECKS_SECONDS = 5.0


@dataclass
class _TimeLeft:
    """A verify's time: reading back (a full one) while `out_of_time()` allows it, then
    quick checks for QUICK_CHECKS_SECONDS more, then nothing."""

    out_of_time: OutOfTime | None
    stopped_at: float | None = None

    def to_read(self) -> bool:
        if self.stopped_at is None and self.out_of_time is not None and self.out_of_time():
            self.stopped_at = time.monotonic()
        return self.stopped_at is None

    def to_check(self) -> bool:
        return self.to_read() or time.monotonic() - (self.stopped_at or 0) < QUICK_CHECKS_SECONDS


class NothingToVerify(ValueError):
    """The run named has nothing to verify; the message says why."""


@dataclass(frozen=True)
class Problem:
    what: str  # missing object | missing manifest | size | sha256 | crc64 | count
    where: str  # the object or manifest key
    detail: str

    def as_json(self) -> dict[str, str]:
        """Redacted, as the run detail shows it (http_api.verify_view): a storage error
        quoted in `detail` may carry what it was told, a signed URL or a token."""
        return {"what": self.what, "where": self.where, "detail": redact(self.detail)}


@dataclass
class Checked:
    source: str
    collection: str
    key: str
    bytes: int | None = None
    records: int | None = None
    crc64: str = "not recorded"  # ok | mismatch | not recorded | not reported
    not_read: str | None = None  # why a full verify could not read it back (archived)
    quick_only: bool = False  # a full verify ran out of time before reading it all back
    unchecked: bool = False  # ... and before even its quick check: nothing is known of it
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    run_id: str
    quick: bool
    objects: list[Checked] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # not tied to one object
    pruned: list[str] = field(default_factory=list)  # "source/collection" retention deleted
    next_step: str | None = None  # how to read back what it only quick-checked (quick_only)

    @property
    def ok(self) -> bool:
        return not self.problems and all(o.ok for o in self.objects)

    @property
    def not_read(self) -> list[str]:
        """The collections ("source/collection") with an object it could not read back."""
        return sorted({f"{o.source}/{o.collection}" for o in self.objects if o.not_read})

    @property
    def quick_only(self) -> list[str]:
        """The objects a full verify only quick-checked: its time ran out before it read
        them back (in the order checked)."""
        return [o.key for o in self.objects if o.quick_only]

    @property
    def unchecked(self) -> list[str]:
        """The objects a full verify did not check at all, its time having run out even
        for quick checks (in the order they would have been checked)."""
        return [o.key for o in self.objects if o.unchecked]

    @property
    def fully_read(self) -> int:
        """How many objects were read back to the end (their SHA-256 and count checked)."""
        return sum(o.records is not None for o in self.objects)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "quick": self.quick, "ok": self.ok,
            "problems": [p.as_json() for p in self.problems], "pruned": self.pruned,
            "not_read": self.not_read, "quick_only": self.quick_only,
            "unchecked": self.unchecked,
            "next_step": self.next_step,
            "objects": [{**{k: v for k, v in o.__dict__.items() if k != "problems"},
                         "ok": o.ok, "problems": [p.as_json() for p in o.problems]}
                        for o in self.objects],
        }


def latest_run(ctx: Context, source: str | None = None, collection: str | None = None) -> str:
    """The latest finished backup run that has a backup to check (of `source` and
    `collection` when given): a newer run that ended with none, or backed up only other
    collections, would leave nothing to verify."""
    for run in ctx.state.list_runs(limit=50):
        if (run.status is not RunStatus.RUNNING and run.operation == "backup"
                and _has_backups(ctx, run.run_id, source, collection)):
            return run.run_id
    if source is None and collection is None:
        raise NothingToVerify("no finished run with a backup to verify yet")
    raise NothingToVerify(f"no finished run among the latest 50 has a backup of "
                          f"{source or '*'}/{collection or '*'} to verify; GET /runs (or "
                          "`baas-backup status`) lists the runs")


def _has_backups(ctx: Context, run_id: str, source: str | None, collection: str | None) -> bool:
    return any(j.status is JobStatus.DONE and j.pruned_at is None
               and source in (None, j.source) and collection in (None, j.collection)
               for j in ctx.state.list_jobs(run_id))


def verify_run(ctx: Context, run_id: str, *, source: str | None = None,
               collection: str | None = None, quick: bool = False,
               out_of_time: OutOfTime | None = None) -> Report:
    """A full verify stops reading objects back once `out_of_time()` says so (the HTTP
    API's, inside the trigger's timeout); what is left is quick-checked (`quick_only`).
    Quick checks, a quick verify's too, stop QUICK_CHECKS_SECONDS later (`unchecked`)."""
    _not_running(ctx, run_id)
    report = Report(run_id=run_id, quick=quick)
    entries = _backups(ctx, run_id, report)
    chosen = [e for e in entries if (source is None or e["source"] == source)
              and (collection is None or e["collection"] == collection)]
    if not chosen:
        raise NothingToVerify(f"run {run_id} has no finished backup"
                              + (f" of {source or '*'}/{collection or '*'}" if source or collection else ""))
    gone = _pruned(ctx, run_id)
    time_left = _TimeLeft(out_of_time)
    for entry in chosen:
        name = f"{entry['source']}/{entry['collection']}"
        if name in gone:  # retention deleted it on purpose: nothing there to check
            report.pruned.append(name)
        else:
            report.objects.extend(_verify_backup(ctx, entry, quick, time_left))
    return report


def read_back_step(report: Report, whose_time: str) -> str | None:
    """What to do about the objects a verify only quick-checked or did not check,
    `whose_time` (e.g. "the closing invocation's time") having run out; None when it read
    everything back. The CLI's verify has no time limit."""
    if not report.quick_only and not report.unchecked:
        return None
    if report.quick:  # it reads nothing back: what is left is checking the rest
        return (f"{len(report.unchecked)} of {len(report.objects)} objects were not checked, "
                f"{whose_time} having run out before they were; to check them: "
                f"baas-backup verify {report.run_id} --quick")
    unchecked = (f" and {len(report.unchecked)} not checked at all" if report.unchecked
                 else "")
    return (f"{len(report.quick_only)} of {len(report.objects)} objects were only "
            f"quick-checked (size and CRC64){unchecked}, {whose_time} having run out before "
            f"they were read back; to read them back: baas-backup verify {report.run_id}")


def _not_running(ctx: Context, run_id: str) -> None:
    """A run still running has no run manifest yet (the run's close writes it, and checks
    its backups then: verify.after_run): verified now, it would be reported, and alerted,
    as missing."""
    run = ctx.state.get_run(run_id)
    if run is not None and run.status is RunStatus.RUNNING:
        raise NothingToVerify(f"run {run_id} is still running: its backups are checked as it "
                              "closes (verify.after_run); verify it once it has finished")


def _pruned(ctx: Context, run_id: str) -> frozenset[str]:
    """The run's backups ("source/collection") retention deleted: prune marks their jobs
    but leaves the run manifest listing them. A backup gone without that mark is still
    a problem."""
    return frozenset(f"{j.source}/{j.collection}" for j in ctx.state.list_jobs(run_id)
                     if j.pruned_at is not None)


def verify_jobs(ctx: Context, run_id: str, jobs: list[Job], *, quick: bool,
                out_of_time: OutOfTime | None = None) -> Report:
    """Verify the done jobs of a run that is closing (before its run manifest exists);
    a full verify stops reading objects back once `out_of_time()` says so, and any
    stops checking QUICK_CHECKS_SECONDS later."""
    report = Report(run_id=run_id, quick=quick)
    time_left = _TimeLeft(out_of_time)
    for entry in _entries([j for j in jobs if j.pruned_at is None]):
        report.objects.extend(_verify_backup(ctx, entry, quick, time_left))
    return report


def _entries(jobs: list[Job]) -> list[dict[str, Any]]:
    return [{"source": j.source, "collection": j.collection, **j.result.model_dump()}
            for j in jobs if j.status is JobStatus.DONE and j.result]


def _backups(ctx: Context, run_id: str, report: Report) -> list[dict[str, Any]]:
    """The run's done backups, from its run manifest in the bucket (what a user restores
    from); from the state store when the run manifest itself is missing."""
    key = run_manifest_key(ctx.config.destination.prefix, run_id)
    try:
        manifest = _json_object(ctx.objects.read(key))
        return [j for j in manifest.get("jobs", []) if j.get("status") == JobStatus.DONE.value]
    except StorageError:
        why = "missing"
    except ValueError:  # damaged: cut short, or not a JSON object
        why = "unreadable"
    jobs = ctx.state.list_jobs(run_id)
    if not jobs:
        raise NothingToVerify(f"no run {run_id!r}: neither its run manifest nor its record exists; "
                             "GET /runs (or `baas-backup status`) lists the runs")
    report.problems.append(Problem("missing manifest", key, f"the run manifest is {why}; "
                                   "checking the backups the state store lists"))
    return _entries(jobs)


def _json_object(data: bytes) -> dict[str, Any]:
    """A manifest's JSON object; ValueError for one that is not (damaged)."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError(f"a JSON {type(document).__name__}, not an object")
    return document


def _verify_backup(ctx: Context, entry: dict[str, Any], quick: bool,
                   time_left: _TimeLeft) -> list[Checked]:
    listed = entry.get("objects") or []
    if not time_left.to_check():  # not even its manifest is read
        return [Checked(entry["source"], entry["collection"], str(o.get("key")), unchecked=True)
                for o in listed]
    manifest_key = str(entry.get("manifest_key", ""))
    file_type = "csv" if str(entry.get("key", "")).endswith(".csv") else "json"
    try:
        manifest = _json_object(ctx.objects.read(manifest_key))
        objects = manifest.get("objects") or listed
        file_type = manifest.get("file_type", file_type)
        missing_manifest = None
    except (StorageError, ValueError):
        objects = listed
        missing_manifest = Problem("missing manifest", manifest_key,
                                   "the backup's manifest is missing or unreadable")
    checked = [_verify_object(ctx, entry, o, file_type, quick=quick, time_left=time_left)
               for o in objects]
    if missing_manifest and checked:
        checked[0].problems.insert(0, missing_manifest)
    manifest_keys = {o.get("key") for o in objects}
    for other in listed:
        if other.get("key") not in manifest_keys:
            gone = Checked(entry["source"], entry["collection"], str(other.get("key")))
            gone.problems.append(Problem("missing manifest", manifest_key,
                                         "the run manifest lists an object its manifest does not"))
            checked.append(gone)
    return checked


def _verify_object(ctx: Context, entry: dict[str, Any], recorded: dict[str, Any],
                   file_type: str, *, quick: bool, time_left: _TimeLeft) -> Checked:
    key = str(recorded.get("key"))
    checked = Checked(entry["source"], entry["collection"], key)
    if not time_left.to_check():
        checked.unchecked = True
        return checked
    info = ctx.objects.head(key)
    if info is None:
        checked.problems.append(Problem("missing object", key, "the object is not in the bucket"))
        return checked
    checked.bytes = info.size
    if info.size != recorded.get("bytes"):
        checked.problems.append(Problem("size", key, f"{info.size} bytes, the manifest says "
                                                      f"{recorded.get('bytes')}"))
    _compare_crc64(checked, recorded.get("crc64"), info.crc64)
    if quick:
        return checked
    if not time_left.to_read():  # checked quickly above: the report says it was not read back
        checked.quick_only = True
        return checked
    sha256, counter, total = hashlib.sha256(), counter_for(file_type), 0
    try:
        for chunk in ctx.objects.iter_read(key, READ_CHUNK):
            if not time_left.to_read():  # cut short: what was read proves nothing either way
                checked.quick_only = True
                return checked
            sha256.update(chunk)
            counter.feed(chunk)
            total += len(chunk)
    except StorageError as exc:
        if info.storage_class in ARCHIVED and exc.code in UNREADABLE and not total:
            checked.not_read = NOT_READ.format(storage_class=info.storage_class)
        else:  # an archived object with a restored copy reads like any other
            checked.problems.append(Problem("missing object", key,
                                            f"could not be read back: {exc}"))
        return checked
    checked.records = counter.total
    if sha256.hexdigest() != recorded.get("sha256"):
        checked.problems.append(Problem("sha256", key, "the content differs from what was "
                                                        "recorded when it was copied"))
    if counter.total != recorded.get("records"):
        checked.problems.append(Problem("count", key, f"{counter.total} records, the manifest "
                                                       f"says {recorded.get('records')}"))
    return checked


def _compare_crc64(checked: Checked, recorded: object, reported: object) -> None:
    if recorded is None:
        checked.crc64 = "not recorded"  # manifests written before CRC64 was recorded
    elif reported is None:
        checked.crc64 = "not reported"  # a store that does not return x-cos-hash-crc64ecma
    elif str(recorded) == str(reported):
        checked.crc64 = "ok"
    else:
        checked.crc64 = "mismatch"
        checked.problems.append(Problem("crc64", checked.key, f"COS reports CRC64 {reported}, "
                                                               f"the manifest recorded {recorded}"))


def record(ctx: Context, report: Report) -> None:
    """A verify asked for on its own (CLI, HTTP) is reported like a backup's failure: kept
    on the run in the state store and in the bucket next to the run, and, when it found
    problems, sent as an alert."""
    now = ctx.clock()
    problems = problem_lines(report)
    found = verdicts(report)
    result = {"at": now.isoformat(), "quick": report.quick, "ok": report.ok, "problems": problems,
              "not_read": report.not_read, **found}
    if report.quick_only or report.unchecked:  # its time ran out (HTTP): what to do
        result.update(quick_only=report.quick_only, unchecked=report.unchecked,
                      next_step=report.next_step)
    key = f"{run_folder(ctx.config.destination.prefix, report.run_id)}/verify-{now:%Y%m%dT%H%M%S%f}.json"
    ctx.objects.put_json(key, report.as_json())
    text = None
    if not report.ok:
        lines = "\n".join(f"- {line}" for line in problems[:20])
        text = f"❌ verify of backup run {report.run_id} found problems:\n{lines}\nreport: {key}"
    # kept on the run before it is sent: one no webhook accepts is sent again by the poller
    alert = claimed(now, text) if text is not None else None
    saved = None
    for _ in range(3):  # compare-and-set: another writer may have changed the run meanwhile
        run = ctx.state.get_run(report.run_id)
        if run is None:
            break
        # reading no data, a quick verify with no CRC64 to compare clears no reading's finding
        checked = set(found["checked"]) - (read_wrong(run) & size_only(report))
        this = {**result, "checked": sorted(checked)}
        kept = {**this, "checked": still_checked(run, this), "failed": still_failed(run, this),
                "read_wrong": sorted((read_wrong(run) - checked) | set(found["read_wrong"])),
                "report_key": key, **after_run_unread(run, report)}
        summary = {**(run.summary or {}), "last_verify": kept}
        changed = run.model_copy(update={"summary": summary})
        if alert is not None:
            changed = with_alert(changed, "verify", alert)
        elif answered(run, kept):
            changed = with_alert(changed, "verify", None)
        saved = ctx.state.save_run(changed)
        if saved is not None:
            break
    if text is not None and alert is not None:
        if saved is not None:
            keep_in_reach(ctx, saved, alert)
        delivered = ctx.notifier.alert(text)
        if saved is not None:
            settle(ctx, saved, "verify", alert, delivered)


def after_run_unread(run: Run, report: Report) -> dict[str, list[str]]:
    """`after_run_quick_only`: the objects the check after the run only quick-checked, or
    did not check at all (its time ran out: close.py), that no verify since has read back
    (or, after a quick check, checked). `last_verify` replaces the
    one before it, so it carries them forward: a full verify of users reads no orders, a
    quick one reads nothing. Absent when the check after the run read everything back."""
    summary = run.summary or {}
    after = summary.get("verify")
    after = after if isinstance(after, dict) else {}
    earlier = summary.get("last_verify")
    if isinstance(earlier, dict) and isinstance(earlier.get("after_run_quick_only"), list):
        left = earlier["after_run_quick_only"]
    else:
        left = [*(after.get("quick_only") or []), *(after.get("unchecked") or [])]
    if not isinstance(left, list) or not left:
        return {}
    if after.get("mode") == "quick":  # what the check after the run meant to do: a HEAD
        done = {o.key for o in report.objects if not o.unchecked}
    else:
        done = {o.key for o in report.objects if o.records is not None}  # read to the end
    return {"after_run_quick_only": [key for key in left if key not in done]}


def answered(run: Run, kept: dict[str, Any]) -> bool:
    """Whether a clean verify answers the verify alert still waiting on `run`: nothing it
    or an earlier one found wrong stands, so that alert would report damage no longer
    there. One given up stays listed, as outbox.py keeps it."""
    waiting = run.undelivered.get("verify")
    return waiting is not None and waiting.gave_up_at is None and not kept["failed"]


def verdicts(report: Report) -> dict[str, list[str]]:
    """The collections ("source/collection") the report checked, and those whose data it
    found wrong, kept on the run for retention and the overview (`unverified`). An
    archived object it could not read is not wrong, but not checked either, nor is one its
    time ran out before it checked (`unchecked`): an earlier verdict on its collection stands."""
    unread = set(report.not_read) | {f"{o.source}/{o.collection}" for o in report.objects
                                     if o.unchecked}
    return {"checked": sorted({f"{o.source}/{o.collection}" for o in report.objects} - unread),
            "failed": sorted({f"{o.source}/{o.collection}" for o in report.objects
                              if o.problems}),
            "read_wrong": sorted({f"{o.source}/{o.collection}" for o in report.objects
                                  if any(p.what in READ_PROBLEMS for p in o.problems)})}


READ_PROBLEMS = frozenset({"sha256", "count"})  # found only by reading the data back


def size_only(report: Report) -> set[str]:
    """The collections a verify saw the size of only: it read none of an object's data (a
    quick verify, or a full one whose time ran out before it read the object back:
    `quick_only`), and had no CRC64 to compare (a manifest from before CRC64 was
    recorded, a store that reports none). What reading found wrong there (`read_wrong`)
    it cannot clear: the content can be wrong at the right size."""
    return {f"{o.source}/{o.collection}" for o in report.objects
            if (report.quick or o.quick_only) and o.crc64 != "ok"}


def read_wrong(run: Run) -> set[str]:
    """The collections of `run` whose data a verify read back and found wrong (sha256,
    count) and no later verify cleared: kept like `unverified`, oldest verify first."""
    summary = run.summary or {}
    found: set[str] = set()
    for name in ("verify", "last_verify"):
        result = summary.get(name)
        if isinstance(result, dict):
            found = ((found - set(result.get("checked") or ()))
                     | set(result.get("read_wrong") or ()))
    return found


def still_failed(run: Run, result: dict[str, Any]) -> list[str]:
    """What this verify found wrong, and what an earlier one found wrong that this one did
    not check again (a verify of one collection clears no other): `last_verify` replaces
    the one before it, so it carries those forward."""
    earlier = unverified(run) - set(result["checked"])
    return sorted(earlier | set(result["failed"]))


def still_checked(run: Run, result: dict[str, Any]) -> list[str]:
    """What this verify checked, and what an earlier one asked for later checked: the
    after-run check's verdict on those was replaced, and `last_verify` replaces the one
    before it, so it carries them forward (else a verify of users would bring back a
    failure of orders that a verify of orders had cleared)."""
    earlier = (run.summary or {}).get("last_verify")
    before = earlier.get("checked") if isinstance(earlier, dict) else None
    return sorted(set(result["checked"]) | set(before or ()))


def unverified(run: Run) -> frozenset[str]:
    """The collections ("source/collection") of `run` whose data its verify found wrong:
    the check after the run (`verify`), then the latest one asked for later
    (`last_verify`), which clears what it checked and found right. Verifies recorded
    before the lists were kept name no collection."""
    summary = run.summary or {}
    failed: set[str] = set()
    for name in ("verify", "last_verify"):  # oldest first
        result = summary.get(name)
        if isinstance(result, dict):
            failed = (failed - set(result.get("checked") or ())) | set(result.get("failed") or ())
    return frozenset(failed)


def problem_lines(report: Report) -> list[str]:
    """One line per problem, redacted: kept on the run and sent as an alert."""
    return [redact(line) for line in
            [f"{o.source}/{o.collection} {p.what}: {p.detail}" for o in report.objects
             for p in o.problems] + [f"{p.what}: {p.where}: {p.detail}" for p in report.problems]]
