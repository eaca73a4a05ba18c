"""Running jobs: claim, attempt, classify, apply the policy, schedule — never sleep.

A task is straight-line code registered with @recoverable (recovery.registry); it calls
job.checkpoint(...) and job.progress(done, total) and raises on failure. execute() owns
everything else. The django-q2 cluster calls work(job_id); management commands call
run_foreground(), which goes through the same execute().
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from recovery.choices import Category, Outcome, Requested, Status
from recovery.classify import Failure, classify
from recovery.conf import setting
from recovery.errors import BreakerOpen, Defer, LeaseLost, PauseRequested
from recovery.models import (
    Attempt,
    CircuitBreaker,
    Job,
    holder_is_dead,
    process_name,
    request_end,
)
from recovery.policy import Action, policy_for
from recovery.registry import REGISTRY, Kind, run_cancel_hook
from recovery.signals import job_changed

log = logging.getLogger(__name__)


def enqueue(kind: str, params: dict | None = None, *, breaker_key: str = "") -> Job:
    """Create a queued job and hand it to the worker cluster."""
    if kind not in REGISTRY:
        raise LookupError(f"no job kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    job = Job.objects.create(kind=kind, params=params or {}, breaker_key=breaker_key)
    job.dispatch()
    return job


def work(job_id: int) -> str:
    """The worker cluster's task: execute(), then any retry due within
    RECOVERY_INLINE_RETRY_SECONDS right here (a dropped connection resumes in well under
    a second); longer waits go back to the schedule, so a worker never sleeps long."""
    status = execute(job_id)
    while status == Status.WAITING and (delay := inline_delay(job_id)) is not None:
        time.sleep(delay)
        status = execute(job_id)
    return status


def inline_delay(job_id: int) -> float | None:
    due = Job.objects.filter(pk=job_id).values_list("next_attempt_at", flat=True).first()
    delay = (due - timezone.now()).total_seconds() if due else None
    if delay is None or delay > setting("RECOVERY_INLINE_RETRY_SECONDS"):
        return None
    return max(0.0, delay)


def execute(job_id: int, owner: str = "", now: datetime | None = None) -> str:
    """One attempt at the job if it can be claimed; its status after."""
    job = run_once(job_id, owner, now)
    if job is None:
        current = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        return current or "missing"
    return job.status


def run_once(job_id: int, owner: str = "", now: datetime | None = None) -> Job | None:
    """Claim and run one attempt; None when another process holds or finished the job."""
    owner, now = owner or process_name(), now or timezone.now()
    job = Job.objects.claim(job_id, owner, now)
    if job is None:
        return None
    kind = REGISTRY.get(job.kind)
    if kind is None:
        refuse_unknown_kind(job)
        return job
    attempt = Attempt.objects.create(
        job=job, number=job.attempt, owner=owner, started_at=now, progress_from=job.progress_done
    )
    run_attempt(job, kind, attempt, now)
    return job


def refuse_unknown_kind(job: Job) -> None:
    message = f"This job's type ({job.kind}) is not known to this version of the worker."
    job.release(
        status=Status.FAILED,
        finished_at=timezone.now(),
        attempt=job.attempt - 1,
        error_category=Category.VALIDATION,
        error_message=message,
    )


def run_attempt(job: Job, kind: Kind, attempt: Attempt, now: datetime) -> None:
    """Run the task behind the job's breaker (an open one defers the job: no attempt)."""
    start_checkpoint = dict(job.checkpoint_data)

    def progressed() -> bool:
        return job.progress_done > attempt.progress_from or job.checkpoint_data != start_checkpoint

    with LeaseKeeper(job):
        try:
            run_guarded(job, kind, now, progressed)
        except LeaseLost:
            attempt.close(Outcome.LOST, progress_to=job.progress_done)
        except Defer as defer:
            settle_deferred(job, attempt, defer)
        except PauseRequested:
            settle(job, attempt, Outcome.PAUSED, **request_end(Requested.PAUSE, timezone.now()))
        except Exception as exc:
            settle_failure(job, kind, attempt, classify(exc), progressed())
        else:
            settle(job, attempt, Outcome.SUCCEEDED, **succeeded(timezone.now()))


def run_guarded(job: Job, kind: Kind, now: datetime, progressed: Callable[[], bool]) -> None:
    """The task behind the job's breaker. When that breaker refuses, a kind with
    `reroute` may move the job to another key, which is asked at once; each key is asked
    once, so this ends. A refusal from inside the task (a nested guard) is not rerouted."""
    refused: set[str] = set()
    while True:
        started = False
        try:
            with CircuitBreaker.guard(job.breaker_key, job.owner, now, progressed=progressed):
                started = True
                kind.func(job)
            return
        except BreakerOpen as refusal:
            refused.add(refusal.key)
            if started or kind.reroute is None or not kind.reroute(job, frozenset(refused)):
                raise
            if job.breaker_key in refused:
                raise


def succeeded(now: datetime) -> dict:
    return {
        "status": Status.SUCCEEDED,
        "finished_at": now,
        "transient_failures": 0,
        "error_category": "",
        "error_message": "",
        "error_detail": "",
    }


def settle(
    job: Job, attempt: Attempt, outcome: str, failure: Failure | None = None, **fields
) -> None:
    """End the attempt: release the job with `fields`, close the attempt as `outcome`.

    A pause or cancel asked for meanwhile takes over (Job.release): the attempt then says
    so, and a cancel runs the kind's cleanup. The attempt ended without its worker dying,
    which breaks any run of lost attempts.
    """
    now = timezone.now()
    released = job.release(lost_attempts=0, **fields)
    if released and job.status != fields["status"]:
        outcome = Outcome(job.status)
    attempt.close(outcome, failure, progress_to=job.progress_done, now=now)
    if released and job.status == Status.CANCELLED:
        run_cancel_hook(job)


def settle_deferred(job: Job, attempt: Attempt, defer: Defer) -> None:
    """The task could not start yet (no free slot, an open breaker): wait until the
    Defer is due, and don't count this as an attempt."""
    released = job.release(
        status=Status.WAITING,
        next_attempt_at=defer.due(timezone.now()),
        attempt=job.attempt - 1,
        dispatched_at=None,
        error_message=defer.message,
    )
    attempt.delete()
    if released and job.status == Status.CANCELLED:
        run_cancel_hook(job)


def settle_failure(job: Job, kind: Kind, attempt: Attempt, failure: Failure, progressed: bool):
    """Apply the category's policy: retry later, restart, pause, or fail.

    Progress resets the count of failures in a row, and `max_attempts` becomes this
    attempt plus the tries the policy has left from here (see Job).
    """
    now = timezone.now()
    policy = policy_for(job.kind, failure.category, kind.policies)
    failures = 1 if progressed else job.transient_failures + 1
    error = {
        "error_category": failure.category,
        "error_message": failure.message,
        "error_detail": failure.detail,
        "max_attempts": job.attempt + max(0, policy.max_attempts - failures),
    }
    counted = {**error, "transient_failures": failures}
    if failure.category == Category.CANCELLED:
        fields = {"status": Status.CANCELLED, "finished_at": now, **error}
        settle(job, attempt, Outcome.CANCELLED, failure, **fields)
    elif policy.action == Action.RETRY and not policy.gives_up(failures):
        retry_at = now + timedelta(seconds=policy.delay(failures, failure.retry_after))
        fields = {"status": Status.WAITING, "next_attempt_at": retry_at, "dispatched_at": None}
        settle(job, attempt, Outcome.RETRY, failure, **fields, **counted)
    elif policy.action == Action.RESTART and job.integrity_restarts + 1 < policy.max_attempts:
        settle_restart(job, attempt, failure, error)
    elif policy.action == Action.PAUSE:
        settle(job, attempt, Outcome.PAUSED, failure, status=Status.PAUSED, **counted)
    else:
        fields = {"status": Status.FAILED, "finished_at": now, **counted}
        settle(job, attempt, Outcome.FAILED, failure, **fields)


def settle_restart(job: Job, attempt: Attempt, failure: Failure, error: dict) -> None:
    """Integrity failure: throw away what was done and start over at once, one time."""
    settle(
        job,
        attempt,
        Outcome.RESTARTED,
        failure,
        status=Status.QUEUED,
        checkpoint_data={},
        progress_done=0,
        integrity_restarts=job.integrity_restarts + 1,
        dispatched_at=None,
        **error,
    )
    if job.status == Status.QUEUED:
        job.dispatch()


class LeaseKeeper:
    """Renews the job's lease from a thread while the task runs in this one."""

    def __init__(self, job: Job):
        self.job = job
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, name=f"lease-{job.pk}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def loop(self) -> None:
        interval = setting("RECOVERY_LEASE_SECONDS") / 3
        try:
            while not self.stop.wait(interval) and self.job.renew_lease():
                pass
        except Exception:
            log.exception("lease renewal for job %s failed", self.job.pk)
        finally:
            connection.close()


# -- the cluster's housekeeping (recovery.worker.tick) and `manage.py recover` ------------


def reap_expired(now: datetime | None = None) -> list[int]:
    """Take back running jobs whose runner is gone (lease expired, or a dead local
    process). Each is queued to resume from its checkpoint; or ends as the user asked
    meanwhile (paused, or cancelled with the kind's cleanup); or, once
    RECOVERY_MAX_LOST_ATTEMPTS tries in a row died without progress, fails (see poisoned)."""
    now = now or timezone.now()
    reclaimed = []
    for job in Job.objects.filter(status=Status.RUNNING):
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        if (expired or holder_is_dead(job.lease_owner)) and reclaim(job, now):
            reclaimed.append(job.pk)
    return reclaimed


def reap_after_restart(now: datetime | None = None) -> list[int]:
    """At worker start: take back the runs of local processes that died with the app.

    The whole app went down (a kill, a reboot, a power cut), not the job's own worker,
    so those tries are not held against the job: a poison job is one whose worker dies
    while the rest of the app lives on (see reclaim)."""
    now = now or timezone.now()
    running = Job.objects.filter(status=Status.RUNNING)
    dead = [job for job in running if holder_is_dead(job.lease_owner)]
    return [job.pk for job in dead if reclaim(job, now, blame=False)]


def reclaim(job: Job, now: datetime, blame: bool = True) -> bool:
    """Take the run of a holder that is gone; False if another process took it first.
    A try that moved the job forward before its worker died does not count as lost;
    one that is not the job's fault (`blame=False`) leaves the count as it was."""
    attempt = job.attempts.filter(outcome=Outcome.RUNNING).order_by("number", "id").last()
    progressed = attempt is not None and job.progress_done > attempt.progress_from
    lost = 0 if progressed else job.lost_attempts + int(blame)
    fields = {"status": Status.QUEUED, "dispatched_at": None, "lost_attempts": lost}
    if lost >= setting("RECOVERY_MAX_LOST_ATTEMPTS"):
        fields.update(poisoned(job, lost, now))
    if not job.take_back(fields, now):
        return False
    close_lost_attempts(job, now)
    if job.status == Status.CANCELLED:
        run_cancel_hook(job)
    return True


def poisoned(job: Job, lost: int, now: datetime) -> dict:
    """Fail a job whose workers keep dying on it (out of memory, a crashing library):
    running it again would only take the next worker down too."""
    tries = job.attempts.filter(outcome__in=(Outcome.LOST, Outcome.RUNNING))
    lines = [lost_line(a, now) for a in reversed(tries.order_by("-number", "-id")[:lost])]
    return {
        "status": Status.FAILED,
        "finished_at": now,
        "error_category": Category.UNKNOWN,
        "error_message": f"The worker stopped {lost} times while running this job — out of memory?",
        "error_detail": "The worker died during each of these attempts, none of which made "
        "progress:\n" + "\n".join(lines),
    }


def lost_line(attempt: Attempt, now: datetime) -> str:
    gone = attempt.finished_at or now
    return (
        f"attempt {attempt.number}: worker {attempt.owner or 'unknown'}, "
        f"started {attempt.started_at:%Y-%m-%d %H:%M:%S}, found gone {gone:%H:%M:%S} UTC"
    )


def close_lost_attempts(job: Job, now: datetime) -> None:
    message = "The worker running this stopped (killed or crashed) before it finished."
    # Only tries up to the one read before the take-back: a duplicate queue message may
    # already have claimed the job again, and its fresh attempt is not lost.
    job.attempts.filter(outcome=Outcome.RUNNING, number__lte=job.attempt).update(
        outcome=Outcome.LOST, finished_at=now, message=message, progress_to=job.progress_done
    )
    job.refresh_from_db()
    job_changed.send(sender=Job, job=job)


def dispatch_due(now: datetime | None = None) -> list[int]:
    """Send due jobs to the cluster: new or rescheduled ones, and any whose message got lost."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=setting("RECOVERY_REDISPATCH_SECONDS"))
    sent = []
    for job in Job.objects.due(now).order_by("created_at")[:500]:
        if job.dispatched_at is None or job.dispatched_at < stale:
            job.dispatch()
            sent.append(job.pk)
    return sent


def run_foreground(
    job_id: int,
    owner: str = "",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = timezone.now,
    on_wait: Callable[[Job, float], None] | None = None,
) -> Job:
    """Run the job here until it succeeds, fails, is cancelled or paused.

    Waits out scheduled retries and open breakers (a foreground command may sleep; a
    worker never does) and takes over a job whose previous runner died once its lease
    has expired. Before every sleep, `on_wait(job, seconds)` hears of it: `job` freshly
    read (its error_message says why it waits), `seconds` how long this sleep is.
    """
    owner = owner or process_name()
    while True:
        job = Job.objects.get(pk=job_id)
        now = clock()
        if job.is_terminal or job.status == Status.PAUSED:
            return job
        wake = job.next_attempt_at if job.status == Status.WAITING else None
        if job.status == Status.RUNNING:
            if job_id in reap_expired(now):
                continue
            wake = job.lease_expires_at
        if wake and wake > now:
            seconds = min((wake - now).total_seconds(), 60)
            if on_wait is not None:
                on_wait(job, seconds)
            sleep(seconds)
            continue
        execute(job_id, owner, now)
