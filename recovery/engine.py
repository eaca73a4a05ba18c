"""Running jobs: claim, attempt, classify, apply the policy, schedule — never sleep.

A task is straight-line code registered with @recoverable; it calls job.checkpoint(...)
and job.progress(done, total) and raises on failure. execute() owns everything else. The
django-q2 cluster calls execute(job_id); management commands call run_foreground(), which
goes through the same execute().
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module

from django.db import connection
from django.utils import timezone

from recovery.classify import Failure, classify
from recovery.conf import setting
from recovery.errors import Defer, LeaseLost, PauseRequested
from recovery.models import (
    Attempt,
    Category,
    CircuitBreaker,
    Job,
    Outcome,
    Status,
    holder_is_dead,
    process_name,
)
from recovery.policy import Action, policy_for

log = logging.getLogger(__name__)


@dataclass
class Kind:
    name: str
    func: Callable[[Job], None]
    policies: dict = field(default_factory=dict)
    on_cancel: Callable[[Job], None] | None = None


REGISTRY: dict[str, Kind] = {}


def recoverable(kind: str, *, policies: dict | None = None, on_cancel=None):
    """Register `func(job)` as the code for jobs of `kind`.

    `policies` overrides the retry policy per category for this kind, e.g.
    {"network": {"max_attempts": 20}}. `on_cancel(job)` cleans up after a cancel.
    """

    def register(func: Callable[[Job], None]) -> Callable[[Job], None]:
        REGISTRY[kind] = Kind(kind, func, policies or {}, on_cancel)
        return func

    return register


def load_job_modules() -> None:
    for module in setting("RECOVERY_JOB_MODULES"):
        import_module(module)


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
    elif not job.breaker_key or breaker_allows(job, owner, now):
        attempt = Attempt.objects.create(
            job=job,
            number=job.attempt,
            owner=owner,
            started_at=now,
            progress_from=job.progress_done,
        )
        run_attempt(job, kind, attempt)
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
    return job.status


def breaker_allows(job: Job, owner: str, now: datetime) -> bool:
    allowed, retry_at = CircuitBreaker.allow(job.breaker_key, owner, now)
    if not allowed:
        message = (
            f"{job.breaker_key} failed several times in a row, so ComfyHub is giving it a "
            f"rest; it tries again at {retry_at:%H:%M:%S} UTC. Nothing to do."
        )
        # Not an attempt: nothing was tried.
        job.release(
            status=Status.WAITING,
            next_attempt_at=retry_at,
            attempt=job.attempt - 1,
            dispatched_at=None,
            error_message=message,
        )
    return allowed


def run_attempt(job: Job, kind: Kind, attempt: Attempt) -> None:
    start_checkpoint = dict(job.checkpoint_data)
    with LeaseKeeper(job):
        try:
            kind.func(job)
        except LeaseLost:
            attempt.close(Outcome.LOST, progress_to=job.progress_done)
        except Defer as defer:
            settle_deferred(job, attempt, defer)
        except PauseRequested:
            job.release(status=Status.PAUSED, error_message="Paused by the user.")
            attempt.close(Outcome.PAUSED, progress_to=job.progress_done)
        except Exception as exc:
            progressed = (
                job.progress_done > attempt.progress_from or job.checkpoint_data != start_checkpoint
            )
            settle_failure(job, kind, attempt, classify(exc), progressed)
        else:
            settle_success(job, attempt)


def settle_deferred(job: Job, attempt: Attempt, defer: Defer) -> None:
    """The task could not start yet: wait, and don't count this as an attempt."""
    retry_at = timezone.now() + timedelta(seconds=defer.seconds)
    job.release(
        status=Status.WAITING,
        next_attempt_at=retry_at,
        attempt=job.attempt - 1,
        dispatched_at=None,
        error_message=defer.message,
    )
    attempt.delete()


def settle_success(job: Job, attempt: Attempt) -> None:
    now = timezone.now()
    job.release(
        status=Status.SUCCEEDED,
        finished_at=now,
        transient_failures=0,
        error_category="",
        error_message="",
        error_detail="",
    )
    attempt.close(Outcome.SUCCEEDED, progress_to=job.progress_done, now=now)
    if job.breaker_key:
        CircuitBreaker.record_success(job.breaker_key, now)


def settle_failure(job: Job, kind: Kind, attempt: Attempt, failure: Failure, progressed: bool):
    """Apply the category's policy: retry later, restart, pause, or fail."""
    now = timezone.now()
    policy = policy_for(job.kind, failure.category, kind.policies)
    failures = 1 if progressed else job.transient_failures + 1
    error = {
        "error_category": failure.category,
        "error_message": failure.message,
        "error_detail": failure.detail,
        "max_attempts": policy.max_attempts,
    }
    record_on_breaker(job, failure, progressed, now)
    if failure.category == Category.CANCELLED:
        outcome = settle_cancelled(job, kind, error, now)
    elif policy.action == Action.RETRY and not policy.gives_up(failures):
        delay = timedelta(seconds=policy.delay(failures, failure.retry_after))
        job.release(
            status=Status.WAITING,
            next_attempt_at=now + delay,
            dispatched_at=None,
            transient_failures=failures,
            **error,
        )
        outcome = Outcome.RETRY
    elif policy.action == Action.RESTART and job.integrity_restarts + 1 < policy.max_attempts:
        outcome = settle_restart(job, error)
    elif policy.action == Action.PAUSE:
        job.release(status=Status.PAUSED, transient_failures=failures, **error)
        outcome = Outcome.PAUSED
    else:
        job.release(status=Status.FAILED, finished_at=now, transient_failures=failures, **error)
        outcome = Outcome.FAILED
    attempt.close(outcome, failure, progress_to=job.progress_done, now=now)


def record_on_breaker(job: Job, failure: Failure, progressed: bool, now: datetime) -> None:
    """A host that sent bytes before the connection dropped is up: that attempt closes
    the breaker rather than counting towards opening it (a 40 GB file over a flaky link
    must not lock out its own host)."""
    if not job.breaker_key or not failure.transient:
        return
    if progressed:
        CircuitBreaker.record_success(job.breaker_key, now)
    else:
        CircuitBreaker.record_failure(job.breaker_key, now)


def settle_cancelled(job: Job, kind: Kind, error: dict, now: datetime) -> str:
    job.release(status=Status.CANCELLED, finished_at=now, **error)
    run_cancel_hook(job)
    return Outcome.CANCELLED


def run_cancel_hook(job: Job) -> None:
    kind = REGISTRY.get(job.kind)
    if kind and kind.on_cancel:
        kind.on_cancel(job)


def settle_restart(job: Job, error: dict) -> str:
    """Integrity failure: throw away what was done and start over at once, one time."""
    job.release(
        status=Status.QUEUED,
        checkpoint_data={},
        progress_done=0,
        integrity_restarts=job.integrity_restarts + 1,
        dispatched_at=None,
        **error,
    )
    job.dispatch()
    return Outcome.RESTARTED


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
    """Requeue running jobs whose runner is gone: lease expired, or a dead local process."""
    now = now or timezone.now()
    reclaimed = []
    for job in Job.objects.filter(status=Status.RUNNING):
        expired = job.lease_expires_at is not None and job.lease_expires_at < now
        if not (expired or holder_is_dead(job.lease_owner)):
            continue
        gone = Job.objects.filter(pk=job.pk, status=Status.RUNNING, lease_owner=job.lease_owner)
        if gone.update(
            status=Status.QUEUED,
            lease_owner="",
            lease_expires_at=None,
            dispatched_at=None,
            requested="",
            updated_at=now,
        ):
            close_lost_attempts(job, now)
            reclaimed.append(job.pk)
    return reclaimed


def close_lost_attempts(job: Job, now: datetime) -> None:
    message = (
        "The worker running this stopped (killed or crashed); resuming from the last checkpoint."
    )
    job.attempts.filter(outcome=Outcome.RUNNING).update(
        outcome=Outcome.LOST, finished_at=now, message=message, progress_to=job.progress_done
    )
    job.refresh_from_db()
    from recovery.signals import job_changed

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


def run_foreground(job_id: int, owner: str = "", sleep=time.sleep, clock=timezone.now) -> Job:
    """Run the job here until it succeeds, fails, is cancelled or paused.

    Waits out scheduled retries (a foreground command may sleep; a worker never does) and
    takes over a job whose previous runner died once its lease has expired.
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
            sleep(min((wake - now).total_seconds(), 60))
            continue
        execute(job_id, owner, now)
