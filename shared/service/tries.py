"""A job's tries, as the poller and the finisher both count them: when a failed step is
tried again, and how an export the platform forgot is started again as one more try."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from shared.domain.errors import Forgotten
from shared.domain.jobs import Job, JobStatus, backoff
from shared.logs import redact
from shared.service.context import Context, fail, save

log = logging.getLogger(__name__)

# The poller's timer fires once a minute (scf-poller/serverless.yml, `every-minute`): a
# retry due sooner is made at the next tick all the same, so backoff starts from a tick.
TICK_SECONDS = 60.0


def retry_backoff(ctx: Context, attempts: int) -> timedelta:
    """When a job whose step failed `attempts` times before is tried again: one tick, then
    two, four ... up to `timing.max_check_interval_seconds`, so a platform down for a few
    minutes does not use up every running export's tries (seconds would be every tick)."""
    timing = ctx.config.timing
    first = max(timing.first_check_seconds, TICK_SECONDS)
    return backoff(attempts, first, timing.max_check_interval_seconds)


def restart_forgotten(ctx: Context, job: Job, exc: Forgotten, now: datetime) -> bool:
    """Start a forgotten export again, as one more try; False when that was the last try
    and the job failed. A platform that answers every status check (or every download)
    with "unknown job", for a reason of its own, must not get a fresh export started every
    tick until the deadline, each one using up its export quota."""
    timing = ctx.config.timing
    message = redact(str(exc))
    tries = job.attempts + 1
    if tries >= timing.max_attempts:
        fail(ctx, job, f"the platform forgot the export {tries} times, each time started "
                       f"again (timing.max_attempts: {timing.max_attempts}); last answer: "
                       f"{message}. Check the platform's console for the export jobs and "
                       "the source's api_base", now)
        return False
    log.warning("platform forgot the export; starting it again", extra={"reason": message})
    # What the forgotten export said (its counts, parts, a copy's checkpoint and lease)
    # belongs to it alone: the next export starts from nothing.
    save(ctx, job.moved_to(
        JobStatus.PENDING, platform_job_id=None, expected_records=None, part_records=None,
        checkpoint=None, lease_owner=None, lease_until=None, attempts=tries, error=message,
        next_check_at=now + retry_backoff(ctx, job.attempts)))
    return True
