"""Plan and start a restore: which backup goes where and how, checked before anything is
written, then recorded as a run of its own (operation "restore") with one job that the
poller and the finisher carry out like a backup's."""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared.domain.errors import Fatal, StorageError
from shared.domain.jobs import (
    COOLING,
    PRUNING,
    Job,
    JobStatus,
    RestoreOrder,
    Run,
    StoredObject,
    job_id_for,
    run_id_for,
)
from shared.domain.layout import EXTENSIONS
from shared.domain.manifest import RestoreCaveat
from shared.logs import log_context
from shared.ports import (
    ConsoleMadeTargets,
    RestorablePlatform,
    RestoreCaveats,
    RowImportPlatform,
    TargetNameRules,
    TargetNaming,
    TargetShape,
)
from shared.service.context import Context

log = logging.getLogger(__name__)

MODES = ("new", "insert", "upsert")


class RestoreRefused(ValueError):
    """The restore cannot start as asked; the message says why and what to do.
    `status` is the HTTP status it maps to; `field` the input it is about."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class TargetNameRefused(RestoreRefused):
    """`into` cannot name a collection/table of the source's platform: `shown` is the value
    as the message quotes it, `rule` the rule it breaks (the CLI names its --into option)."""

    def __init__(self, shown: str, rule: str) -> None:
        super().__init__(f"into {shown}: {rule}; choose another name", field="into")
        self.shown = shown
        self.rule = rule


# The seeds and API-NOTES document no rule for a WeChat collection's name
# (tcb/databasecollectionadd: "collection_name 集合名称", nothing more) nor for a OneDB
# table's: refused here is only what cannot be a name anywhere. 255: the longest MongoDB
# namespace, whose naming rules CloudBase's collections follow (docs.cloudbase.net,
# http-api/nosql 集合操作: "集合名称必须符合 MongoDB 命名规范").
MAX_TARGET_NAME = 255
ANY_NAME_RULE = (f"a collection/table name is 1 to {MAX_TARGET_NAME} characters, with no / "
                 "and no control characters")


def check_target_name(platform: object, name: str) -> None:
    """`name` as a restore's target, before anything is written: TargetNameRefused if it
    cannot be one on `platform` (the POST /restores `into` and the CLI's --into alike)."""
    shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}… ({len(name)} characters)"
    if not 1 <= len(name) <= MAX_TARGET_NAME or "/" in name or any(
            unicodedata.category(char) == "Cc" for char in name):
        raise TargetNameRefused(shown, ANY_NAME_RULE)
    rule = platform.target_name_rule(name) if isinstance(platform, TargetNameRules) else None
    if rule is not None:
        raise TargetNameRefused(shown, rule)


@dataclass(frozen=True)
class Plan:
    """Exactly what a restore will write where; shown before it starts."""

    source: str
    order: RestoreOrder
    target_exists: bool
    problems: list[str]  # what the backup's quick verify found (empty: it passed)
    # export options its manifest says a restore cannot undo (empty: it restores as it was)
    caveats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def writes_into_existing(self) -> bool:
        return self.order.mode != "new"

    def view(self) -> dict[str, Any]:
        order = self.order
        return {
            "source": self.source, "backup_run_id": order.backup_run_id,
            "collection": order.collection, "target": order.target, "mode": order.mode,
            "target_exists": self.target_exists, "records": order.records,
            "bytes": sum(o.bytes for o in order.objects), "objects": [o.key for o in order.objects],
            "file_type": order.file_type, "verify_problems": self.problems,
            "restore_caveats": self.caveats,
            "forced": order.forced,
            "confirm_needed": self.writes_into_existing,
        }


def default_target(collection: str, backup_run_id: str) -> str:
    """`orders` backed up in run 20261128T030000123Z-… -> `orders_r202611280300`: a name
    that says what it holds and sorts by backup time."""
    return f"{collection}_r{backup_run_id[:8]}{backup_run_id[9:13]}"


def plan_restore(ctx: Context, run_id: str, source: str, collection: str, *,
                 into: str | None = None, mode: str = "new", force: bool = False,
                 idempotency_key: str | None = None) -> Plan:
    """Check everything a restore needs, writing nothing; RestoreRefused says what is wrong.
    A restore recorded under `idempotency_key` is this request's own, resent."""
    if mode not in MODES:
        raise RestoreRefused(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    resent = _resent(ctx, idempotency_key, (source, run_id, collection, mode), into)
    if resent is not None:
        return resent
    backup = _backup(ctx, run_id, source, collection)
    assert backup.result is not None
    _configured(ctx, source)
    manifest = _manifest(ctx, backup)
    _same_kind(ctx, manifest, backup)
    platform = ctx.platforms.get(source)
    if not isinstance(platform, RestorablePlatform):
        raise RestoreRefused(f"source {source!r} is of a platform type that cannot restore "
                             f"({ctx.config.source(source).type})", field="source")
    if mode not in platform.restore_modes:
        raise RestoreRefused(f"source {source!r} ({ctx.config.source(source).type}) restores only "
                             f"in mode {' or '.join(sorted(platform.restore_modes))}, not {mode!r}",
                             field="mode")
    if into is not None:
        check_target_name(platform, into)
    target = into or collection
    if into is None and mode == "new":
        target = (platform.default_target(collection, run_id) if isinstance(platform, TargetNaming)
                  else default_target(collection, run_id))
    if isinstance(platform, TargetShape):
        platform.restoring_into(target, collection)
    exists = platform.target_exists(target)
    if not exists and isinstance(platform, ConsoleMadeTargets):
        # refused here, not once started: the preview must not promise a table it cannot make
        raise RestoreRefused(platform.missing_target(target, collection), field="into",
                             status=409)
    if mode == "new" and exists and platform.count(target) > 0:
        raise RestoreRefused(
            f"{source}/{target} exists and holds records; mode new writes only into a new or "
            "empty collection: choose another name (into), or write into it on purpose with "
            "mode insert or upsert", field="into", status=409)
    _not_busy(ctx, source, target, idempotency_key)
    _not_archived(ctx, run_id, backup.result.objects, source, collection)
    file_type = _backup_file_type(manifest, backup)
    _importable(platform, file_type, source, backup)
    problems = _quick_verify(ctx, backup)
    if problems and not force:
        raise RestoreRefused(
            f"the backup of {source}/{collection} in run {run_id} failed its verify: "
            + "; ".join(problems) + ". Restore it anyway only if you know why (force)",
            field="force", status=409)
    recorded = _restore_caveats(manifest)
    caveats = recorded if recorded is not None else _configured_caveats(platform, collection)
    if caveats and not force:
        how = ("it was exported with" if recorded is not None else "its manifest predates "
               "restore_caveats, and the source's current config exports it with")
        raise RestoreRefused(
            f"the backup of {source}/{collection} in run {run_id} cannot be restored as the "
            "collection was: " + "; ".join(f"{how} {c['option']} {c['value']}: "
                                           f"{c['why']}" for c in caveats)
            + ". Restore it anyway only if you accept that (force)", field="force", status=409)
    order = RestoreOrder(
        backup_run_id=run_id, backup_job_id=backup.job_id, collection=collection, target=target,
        mode=mode, file_type=file_type, objects=backup.result.objects,
        records=backup.result.records, forced=bool(problems or caveats))
    return Plan(source=source, order=order, target_exists=exists, problems=problems,
                caveats=caveats)


def start_restore(ctx: Context, plan: Plan, *, idempotency_key: str,
                  trigger: str) -> tuple[Run, bool]:
    """Claim the backup, then record the restore; the same key again returns the same
    restore. RestoreRefused when retention claimed the backup first."""
    recorded = ctx.state.find_run(idempotency_key)
    if recorded is not None:  # a resend: its restore holds its backup already
        return _same_restore(ctx, recorded, plan), False
    # Planned (and shown) a while ago: another restore may have started into its target since.
    _not_busy(ctx, plan.source, plan.order.target, idempotency_key)
    now = ctx.clock()
    run_id = run_id_for(idempotency_key, now)
    # The read above misses a restore started in the same instant: the claim does not.
    resent = _claim_target(ctx, plan, run_id, idempotency_key)
    if resent is not None:
        return resent, False
    try:
        _claim_backup(ctx, plan.order, run_id)
    except Exception:
        _release_target(ctx, plan, run_id)
        raise
    try:  # planned before retention moved it to the cold class, it could not be read now
        order = plan.order
        _not_archived(ctx, order.backup_run_id, order.objects, plan.source, order.collection)
    except Exception:
        _release_backup(ctx, plan.order, run_id)
        _release_target(ctx, plan, run_id)
        raise
    job = Job(job_id=job_id_for(run_id, plan.source, plan.order.target), run_id=run_id,
              source=plan.source, collection=plan.order.target, restore=plan.order,
              next_check_at=now,
              deadline_at=now + timedelta(minutes=ctx.config.timing.export_deadline_minutes),
              created_at=now, updated_at=now)
    run = Run(run_id=run_id, operation="restore", idempotency_key=idempotency_key,
              trigger=trigger, sources=[plan.source], created_at=now)
    run, created = ctx.state.create_run(run, [job])
    if not created:  # the same request, resent while this one was on its way
        _release_target(ctx, plan, run_id)  # that restore holds it under its own run id
        return _same_restore(ctx, run, plan), False
    with log_context(run_id=run.run_id):
        # The poller's next tick hands it to the finisher (its job is due now): started
        # here, an in-process finisher would keep the HTTP answer waiting for the restore.
        log.info("restore recorded; the poller starts it", extra={"source": plan.source,
                                                                   **plan.view()})
    return run, True


def _configured(ctx: Context, source: str) -> None:
    """A restore writes through the source's settings (its platform and credentials): a
    source renamed or dropped from the config since its backup cannot be written to."""
    names = [s.name for s in ctx.config.sources]
    if source not in names:
        raise RestoreRefused(f"source {source!r} is not in the config (its sources: "
                             f"{', '.join(names)}); add it back under sources, as it was when "
                             "it was backed up, to restore its backups", field="source",
                             status=400)  # as an unknown source is for POST /runs


def _backup(ctx: Context, run_id: str, source: str, collection: str) -> Job:
    run = ctx.state.get_run(run_id)
    if run is None or run.operation != "backup":
        raise RestoreRefused(f"no backup run {run_id!r}; GET /runs (or `baas-backup status`) "
                             "lists them", field="run_id", status=404)
    for job in ctx.state.list_jobs(run_id):
        if job.source != source or job.collection != collection:
            continue
        if job.status is not JobStatus.DONE or job.result is None:
            raise RestoreRefused(f"the backup of {source}/{collection} in run {run_id} did not "
                                 f"finish ({job.status.value}); pick a run where it is done",
                                 field="collection", status=409)
        if job.pruned_at is not None:
            raise RestoreRefused(f"the backup of {source}/{collection} in run {run_id} was "
                                 "deleted by retention; pick a newer run", field="run_id",
                                 status=410)
        return job
    raise RestoreRefused(f"run {run_id} has no backup of {source}/{collection}",
                         field="collection", status=404)


def _resent(ctx: Context, idempotency_key: str | None, asked: tuple[str, str, str, str],
            into: str | None) -> Plan | None:
    """The plan of the restore recorded under `idempotency_key`, when this request (source,
    backup run, collection, mode; `into`) is that one sent again after its answer was lost.
    Planned afresh it would be refused for what the restore itself did since: filled its
    new collection, or ended, so that retention could delete its backup. start_restore
    then finds that restore. None for a new key. A key used for another request is refused
    first (409), whatever else is wrong with this one (its backup gone, say): the conflict
    is what the caller must fix."""
    run = ctx.state.find_run(idempotency_key) if idempotency_key is not None else None
    if run is None:
        return None
    jobs = ctx.state.list_jobs(run.run_id) if run.operation == "restore" else []
    order = jobs[0].restore if len(jobs) == 1 else None
    if (order is None or (jobs[0].source, order.backup_run_id, order.collection, order.mode) != asked
            or into not in (None, order.target)):
        raise _key_used(run)
    return Plan(source=jobs[0].source, order=order, target_exists=True, problems=[])


def _same_restore(ctx: Context, run: Run, plan: Plan) -> Run:
    """`run`, recorded under this request's key, if it is this very restore; else the key
    was used for something else."""
    recorded = [j.restore for j in ctx.state.list_jobs(run.run_id)]
    if run.operation != "restore" or recorded != [plan.order]:
        raise _key_used(run)
    return run


def _key_used(run: Run) -> RestoreRefused:
    return RestoreRefused(f"this idempotency key was already used for {run.operation} "
                          f"{run.run_id}; send a new key for a new restore",
                          field="Idempotency-Key", status=409)


def _claim_backup(ctx: Context, order: RestoreOrder, restore_run_id: str) -> None:
    """A restore's claim on the backup it reads, before anything reads it: retention then
    keeps it (shared/service/holds.py). Retention's claim, won first, refuses the restore."""
    from shared.service.holds import claim

    won = claim(ctx, order.backup_run_id, [order.backup_job_id], restore_run_id)
    job = ctx.state.get_job(order.backup_job_id) if won else None
    if won is None or (won and (job is None or job.pruned_at is not None)):
        raise RestoreRefused(f"the backup of {order.collection} in run {order.backup_run_id} "
                             "was deleted by retention; pick a newer run", field="run_id",
                             status=410)
    if not won and PRUNING not in (held := _held_by(ctx, order)) and COOLING in held:
        raise RestoreRefused(
            f"backup run {order.backup_run_id} is being moved to the cold storage class by "
            f"retention (retention.cold_after_days), where its backup of {order.collection} "
            "cannot be read; pick another run (GET /runs lists them), or restore its objects "
            "in COS once moved (README: Keeping backups, Storage classes)", field="run_id",
            status=409)
    if not won:
        raise RestoreRefused(f"backup run {order.backup_run_id} is being pruned by retention "
                             f"(its backup of {order.collection} is about to be deleted); pick "
                             "another run (GET /runs lists them)", field="run_id", status=409)


def _claim_target(ctx: Context, plan: Plan, restore_run_id: str,
                  idempotency_key: str) -> Run | None:
    """A restore's claim on the collection it will write into (holds.claim_target);
    RestoreRefused when another live restore holds it, unless that one is this very
    request sent twice at once (its restore is returned)."""
    from shared.service.holds import claim_target

    source, target = plan.source, plan.order.target
    holder = claim_target(ctx, source, target, restore_run_id)
    if holder is None:
        return None
    recorded = ctx.state.find_run(idempotency_key)
    if recorded is not None:
        return _same_restore(ctx, recorded, plan)
    raise RestoreRefused(f"restore {holder} is writing into {source}/{target} right now; "
                         f"wait for it to end (GET /restores/{holder})", field="into",
                         status=409)


def _release_target(ctx: Context, plan: Plan, restore_run_id: str) -> None:
    from shared.service.holds import release_target

    release_target(ctx, plan.source, plan.order.target, restore_run_id)


def _held_by(ctx: Context, order: RestoreOrder) -> set[str]:
    """Who holds the backup `order` reads now, as its run records it."""
    run = ctx.state.get_run(order.backup_run_id)
    return {h.by for h in run.holds if h.job_id == order.backup_job_id} if run else set()


def _release_backup(ctx: Context, order: RestoreOrder, restore_run_id: str) -> None:
    from shared.service.holds import release

    release(ctx, order.backup_run_id, restore_run_id, [order.backup_job_id])


def _not_busy(ctx: Context, source: str, target: str, idempotency_key: str | None) -> None:
    """Two restores writing into one collection at once would mix their rows."""
    for run in ctx.state.open_runs():
        if run.operation != "restore" or run.idempotency_key == idempotency_key:
            continue
        for job in ctx.state.list_jobs(run.run_id):
            if job.source == source and job.collection == target and not job.status.terminal:
                raise RestoreRefused(f"restore {run.run_id} is writing into {source}/{target} "
                                     "right now; wait for it to end (GET /restores/"
                                     f"{run.run_id})", field="into", status=409)


def _not_archived(ctx: Context, run_id: str, objects: list[StoredObject], source: str,
                  collection: str) -> None:
    """A backup retention moved to ARCHIVE/DEEP_ARCHIVE (cold_after_days) cannot be read
    until COS restores a temporary copy of it (POST Object restore,
    https://cloud.tencent.com/document/product/436/12633); refused before anything is made.
    Forcing does not help: the finisher could not read it either."""
    cold = [f"{stored.key} ({storage_class})" for stored in objects
            if (storage_class := _unreadable_class(ctx, stored.key))]
    if cold:
        raise RestoreRefused(
            f"the backup of {source}/{collection} in run {run_id} is archived and cannot "
            f"be read: {', '.join(cold)}. Restore each object in COS first (console: 恢复, or "
            "POST Object restore, https://cloud.tencent.com/document/product/436/12633; README: "
            "Keeping backups, Storage classes), wait until its copy is readable, then ask "
            "again. force does not help: a forced restore could not read them either",
            field="run_id", status=409)


def _unreadable_class(ctx: Context, key: str) -> str | None:
    """The archived class of an object COS will not read now; None when it reads. The class
    stays ARCHIVE while a restored copy exists, so an archived object's first byte decides."""
    from shared.service.verify import ARCHIVED, UNREADABLE

    info = ctx.objects.head(key)
    if info is None or info.storage_class not in ARCHIVED:
        return None  # a missing object is the quick verify's to report
    chunks = ctx.objects.iter_read(key, 1)
    try:
        next(iter(chunks), None)
    except StorageError as exc:
        if exc.code in UNREADABLE:
            return info.storage_class
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stop the download after its first byte
    return None


def _quick_verify(ctx: Context, backup: Job) -> list[str]:
    """Sizes, CRC64 and the manifest from HEADs only: cheap enough to run on every request.
    The SHA-256 is checked as the finisher streams the object to the platform."""
    from shared.service.verify import verify_jobs

    report = verify_jobs(ctx, backup.run_id, [backup], quick=True)
    return [f"{p.what}: {p.detail}" for o in report.objects for p in o.problems] + [
        f"{p.what}: {p.detail}" for p in report.problems]


def _manifest(ctx: Context, backup: Job) -> dict[str, Any] | None:
    """The backup's job manifest; None when it cannot be read or is not a JSON object
    (the quick verify reports that)."""
    assert backup.result is not None
    try:
        manifest = json.loads(ctx.objects.read(backup.result.manifest_key))
    except (StorageError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _same_kind(ctx: Context, manifest: dict[str, Any] | None, backup: Job) -> None:
    """Refuse a backup made when the source's name was another kind of source (`shop` was
    WeChat, is MinApp now): its file is the other platform's export, and an import would
    write foreign records into the collection. Its manifest's `platform` says which; one
    that cannot be read or does not say is the quick verify's to report."""
    made = manifest.get("platform") if manifest is not None else None
    now = ctx.config.source(backup.source).type
    if not isinstance(made, str) or not made or made == now:
        return
    assert backup.result is not None
    raise RestoreRefused(
        f"the backup of {backup.source}/{backup.collection} in run {backup.run_id} was made "
        f"when source {backup.source!r} was a {made} source, and it is a {now} source now: "
        f"a {made} backup cannot be restored into {now}. To restore it, configure "
        f"{backup.source!r} as the {made} source it was (type: {made}) and ask again, or "
        f"import its objects ({', '.join(o.key for o in backup.result.objects)}) into {made} "
        "by hand", field="source", status=409)


def _backup_file_type(manifest: dict[str, Any] | None, backup: Job) -> str:
    """The file type the backup was made with: its manifest's `file_type`, else its
    objects' extension (shared/domain/layout.py data_key). Never the source's current
    config: switched since (to JSON, say), it would read a CSV backup as JSON Lines."""
    assert backup.result is not None
    recorded = manifest.get("file_type") if manifest is not None else None
    if isinstance(recorded, str) and recorded:
        return recorded
    named = {next((kind for kind, extension in EXTENSIONS.items()
                   if stored.key.endswith(f".{extension}")), None)
             for stored in backup.result.objects}
    if len(named) == 1 and None not in named:
        return str(named.pop())
    raise RestoreRefused(
        f"cannot tell which file type the backup of {backup.source}/{backup.collection} in "
        f"run {backup.run_id} was made with: its manifest {backup.result.manifest_key} is "
        "unreadable or has no file_type, and its objects' names do not all end in "
        f"{' or '.join('.' + e for e in EXTENSIONS.values())} "
        f"({', '.join(o.key for o in backup.result.objects)}). Check that the manifest is "
        "the backup's own and names its file_type (json or csv); `baas-backup verify` on "
        "the run checks it", field="run_id", status=409)


def _importable(platform: RestorablePlatform, file_type: str, source: str,
                backup: Job) -> None:
    """Refuse a backup whose file type the platform cannot take back. WeChat imports
    file_type 1 JSON or 2 CSV (databaseMigrateImport, API-NOTES.md;
    https://developers.weixin.qq.com/miniprogram/dev/wxcloud/reference-http-api/database/databaseMigrateImport.html);
    MinApp imports "csv、json" files (seeds/minapp-table-export-import.zh.txt, 数据导入). A
    row-by-row restore (OneDB) writes each backup line as one row's JSON body ("请求内容类型
    统一为 application/json", seeds/onedb-cloud-database-api.zh.txt): JSON Lines only."""
    takes = ["json"] if isinstance(platform, RowImportPlatform) else list(EXTENSIONS)
    if file_type not in takes:
        raise RestoreRefused(
            f"the backup of {source}/{backup.collection} in run {backup.run_id} is a "
            f"{file_type} file, and source {source!r} restores "
            f"only {' or '.join(takes)} backups: was {source!r} another kind of source when "
            "it was made? Restore it into a source of that kind", field="source",
            status=409)


def _restore_caveats(manifest: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The export options the backup's manifest says a restore cannot undo; None for a
    manifest written before they were recorded (it cannot say). One that cannot be read
    is the quick verify's to report."""
    if manifest is None:
        return []
    if "restore_caveats" not in manifest:
        return None
    return [RestoreCaveat.model_validate(c).model_dump()
            for c in manifest["restore_caveats"] or []]


def _configured_caveats(platform: object, collection: str) -> list[dict[str, Any]]:
    """For a manifest that predates restore_caveats: the options the source's current
    config sets for `collection` that a restore cannot undo. The backup was most likely
    made with them; a table the config no longer lists has none to report."""
    if not isinstance(platform, RestoreCaveats):
        return []
    try:
        return platform.restore_caveats(collection)
    except Fatal:
        return []


def restoring(ctx: Context) -> set[str]:
    """The backup job ids an open restore reads from: retention keeps them."""
    return {job.restore.backup_job_id for run in ctx.state.open_runs()
            if run.operation == "restore"
            for job in ctx.state.list_jobs(run.run_id) if job.restore is not None}
