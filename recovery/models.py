"""The recovery records: Job (the truth about one long operation), Attempt (one try at
it), CircuitBreaker (one per host, shared by every process) and WorkerHeartbeat.

The vocabulary lives in recovery.choices; it is imported here too, so
`from recovery.models import Category, Status, Job` keeps working.
"""

import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.db import models, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from django_q.tasks import async_task

from recovery.choices import (
    ACTIVE,
    ESCALATION,
    TERMINAL,
    BreakerState,
    Category,
    Outcome,
    Requested,
    Status,
)
from recovery.classify import classify
from recovery.conf import setting
from recovery.errors import STOPS, BreakerOpen, Cancelled, LeaseLost, PauseRequested
from recovery.registry import run_cancel_hook
from recovery.signals import job_changed

# What the pages' buttons may ask of a job (the URL names them): action -> Job method.
USER_ACTIONS = {
    "pause": "pause",
    "resume": "resume",
    "cancel": "cancel",
    "retry": "retry_now",
    "dismiss": "dismiss",
}

# The ends of a run that a pending user request takes over: a pause stops a job that
# would run again; a cancel also stops a paused or failed one (its cleanup runs). Nothing
# takes over a success: the work is done.
OVERRIDDEN = {
    Requested.PAUSE: frozenset({Status.QUEUED, Status.WAITING}),
    Requested.CANCEL: frozenset({Status.QUEUED, Status.WAITING, Status.PAUSED, Status.FAILED}),
}


# Where a cancel takes effect at once (a running job stops at its next checkpoint).
CANCELLABLE = [Status.QUEUED, Status.WAITING, Status.PAUSED]

ENDED_BY_USER = {
    Requested.PAUSE: {
        "status": Status.PAUSED,
        "error_category": "",
        "error_message": "Paused by the user.",
    },
    Requested.CANCEL: {
        "status": Status.CANCELLED,
        "error_category": Category.CANCELLED,
        "error_message": "Cancelled by the user.",
    },
}


def process_name() -> str:
    """Identifies this process as a lease owner / heartbeat writer."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(owner: str) -> bool:
    """True when `owner` was a process on this host that no longer runs.

    Lets a command that was SIGKILLed be taken over at once on re-run, instead of after
    its lease runs out. Owners on other hosts are judged by their lease alone.
    """
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        return False


def lease_until(now):
    return now + timedelta(seconds=setting("RECOVERY_LEASE_SECONDS"))


def seconds_until(when: datetime | None, now: datetime | None = None) -> int | None:
    """Whole seconds until `when` (0 once it passed); None without a `when`."""
    if when is None:
        return None
    return max(0, math.ceil((when - (now or timezone.now())).total_seconds()))


def request_end(requested: str, now: datetime) -> dict:
    """The fields that end a job the way the user asked: paused, or cancelled."""
    return {
        **ENDED_BY_USER[requested],
        "finished_at": now if requested == Requested.CANCEL else None,
        "error_detail": "",
        "next_attempt_at": None,
        "requested": Requested.NOTHING,
    }


def honouring(requested: str, fields: dict) -> dict:
    """`fields` that end a run (status, updated_at…), unless the user's pending request
    takes that end over (OVERRIDDEN): then the job ends as the user asked."""
    if fields["status"] not in OVERRIDDEN.get(requested, ()):
        return fields
    return {**fields, **request_end(requested, fields["updated_at"])}


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=ACTIVE)

    def due(self, now):
        """Jobs a worker may start now: queued, or waiting whose time has come."""
        ready = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        return self.filter(ready, status__in=(Status.QUEUED, Status.WAITING))

    def claim(self, pk: int, owner: str, now) -> "Job | None":
        """Compare-and-set: the one process whose UPDATE matched runs the job."""
        claimed = (
            self.due(now)
            .filter(pk=pk)
            .update(
                status=Status.RUNNING,
                lease_owner=owner,
                lease_expires_at=lease_until(now),
                attempt=F("attempt") + 1,
                # The attempt starting now is within the budget shown (see Job).
                max_attempts=Greatest("max_attempts", F("attempt") + 1),
                started_at=Coalesce("started_at", Value(now)),
                next_attempt_at=None,
                updated_at=now,
            )
        )
        if not claimed:
            return None
        job = self.get(pk=pk)
        job.owner = owner
        job_changed.send(sender=Job, job=job)
        return job

    def expired(self, now):
        return self.filter(status=Status.RUNNING, lease_expires_at__lt=now)


class Job(models.Model):
    """One long operation. The row is the truth; workers only ever act on what it says.

    `attempt` counts every try (it numbers the Attempt rows). `max_attempts` is the try by
    which the job gives up unless one of them makes progress first: each failure sets it
    to `attempt` plus the tries its policy has left, so progress (which resets the failure
    count) raises it, and a claim never starts a try above it. So "attempt n of m" never
    reads n > m, and says truthfully how far the job may go from here.
    `lost_attempts` counts the tries in a row whose worker died without progress.
    `requested` holds a user's pause/cancel until whoever ends the run carries it out.
    """

    kind = models.CharField(max_length=64, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=5)
    transient_failures = models.PositiveIntegerField(default=0)
    integrity_restarts = models.PositiveIntegerField(default=0)
    lost_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    breaker_key = models.CharField(max_length=200, blank=True, db_index=True)
    requested = models.CharField(
        max_length=8, choices=Requested.choices, default=Requested.NOTHING, blank=True
    )
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_unit = models.CharField(max_length=16, blank=True)
    checkpoint_data = models.JSONField(default=dict, blank=True)
    error_category = models.CharField(max_length=16, choices=Category.choices, blank=True)
    error_message = models.TextField(blank=True)
    error_detail = models.TextField(blank=True)
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)

    objects = JobQuerySet.as_manager()

    # Set on the instance a worker runs: who holds the lease, and what the heartbeat saw.
    owner = ""
    lease_lost = False
    last_progress_write = 0.0

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def percent(self) -> int | None:
        if not self.progress_total:
            return None
        return min(100, int(self.progress_done * 100 / self.progress_total))

    @property
    def retry_in(self) -> int | None:
        """Whole seconds until a waiting job's next try; what the pages count down."""
        return seconds_until(self.next_attempt_at) if self.status == Status.WAITING else None

    def write(self, **fields) -> None:
        """Save the given fields (plus updated_at) and tell listeners the job changed."""
        fields["updated_at"] = timezone.now()
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=list(fields))
        job_changed.send(sender=Job, job=self)

    def transition(self, from_statuses, **fields) -> bool:
        """Compare-and-set the row from one of `from_statuses`; False if it had moved on."""
        fields.setdefault("updated_at", timezone.now())
        moved = Job.objects.filter(pk=self.pk, status__in=from_statuses).update(**fields)
        self.refresh_from_db()
        if moved:
            job_changed.send(sender=Job, job=self)
        return bool(moved)

    # -- called by the task, from inside a run -------------------------------------------

    def checkpoint(self, **data) -> None:
        """Persist resume data (merged into checkpoint_data); stop here if asked to."""
        self.check_requests()
        self.write(checkpoint_data={**self.checkpoint_data, **data})

    def progress(self, done: int, total: int | None = None, unit: str | None = None) -> None:
        """Report progress; written at most every RECOVERY_PROGRESS_INTERVAL seconds."""
        self.check_requests()
        self.progress_done, self.progress_total = done, total or self.progress_total
        self.progress_unit = unit or self.progress_unit
        clock = time.monotonic()
        final = total is not None and done >= total
        if final or clock - self.last_progress_write >= setting("RECOVERY_PROGRESS_INTERVAL"):
            self.last_progress_write = clock
            # Pick up pause/cancel within one progress interval, not one lease renewal.
            self.requested = (
                Job.objects.filter(pk=self.pk).values_list("requested", flat=True).first() or ""
            )
            self.write(
                progress_done=done,
                progress_total=self.progress_total,
                progress_unit=self.progress_unit,
            )

    def check_requests(self) -> None:
        """Cooperative stop: raise if the user paused/cancelled or the lease was taken."""
        if self.lease_lost:
            raise LeaseLost(f"job {self.pk} was taken over by another worker")
        if self.requested == Requested.CANCEL:
            raise Cancelled()
        if self.requested == Requested.PAUSE:
            raise PauseRequested()

    def renew_lease(self, now=None) -> bool:
        """Extend the lease and pick up pause/cancel requests; False if the lease is gone."""
        now = now or timezone.now()
        mine = Job.objects.filter(pk=self.pk, status=Status.RUNNING, lease_owner=self.owner)
        if not mine.update(lease_expires_at=lease_until(now)):
            self.lease_lost = True
            return False
        self.requested = mine.values_list("requested", flat=True).first() or ""
        return True

    def release(self, **fields) -> bool:
        """End this process's run with `fields` (a `status` at least) if it still holds
        the lease; False when another process owns the job now.

        A pause or cancel asked for during the run is carried out here, never dropped: it
        takes over the end `fields` describe (see `honouring`), so a Cancel that came
        while an attempt failed ends the job cancelled, not waiting. `self.status` tells
        how the job ended.
        """
        fields.update(lease_owner="", lease_expires_at=None, requested=Requested.NOTHING)
        fields["updated_at"] = timezone.now()
        mine = Job.objects.filter(pk=self.pk, status=Status.RUNNING, lease_owner=self.owner)
        for requested in ESCALATION:
            end = honouring(requested, fields)
            if mine.filter(requested=requested).update(**end):
                for name, value in end.items():
                    setattr(self, name, value)
                job_changed.send(sender=Job, job=self)
                return True
        self.refresh_from_db()  # someone else owns it now; show their truth
        return False

    def take_back(self, fields: dict, now: datetime) -> bool:
        """The reaper's compare-and-set on a run whose holder is gone (as read into this
        instance): end it with `fields`, or as the user asked meanwhile (`honouring`).
        False if the row moved on since it was read."""
        fields = {**fields, "lease_owner": "", "lease_expires_at": None, "updated_at": now}
        fields["requested"] = Requested.NOTHING
        gone = Job.objects.filter(
            pk=self.pk,
            status=Status.RUNNING,
            lease_owner=self.lease_owner,
            requested=self.requested,
        )
        return bool(gone.update(**honouring(self.requested, fields)))

    # -- user actions ----------------------------------------------------------------------

    def act(self, action: str) -> bool:
        """Carry out the user action named `action` (a key of USER_ACTIONS); False when
        the job had moved on and it no longer applies. ValueError for any other name."""
        if action not in USER_ACTIONS:
            raise ValueError(f"no job action {action!r}; known: {', '.join(USER_ACTIONS)}")
        return getattr(self, USER_ACTIONS[action])()

    def pause(self) -> bool:
        """Pause at once, or, when running, at the task's next checkpoint (or when its
        attempt ends, or when the reaper takes it back: the request stays on the row)."""
        return self.ask(Requested.PAUSE, [Status.QUEUED, Status.WAITING])

    def cancel(self) -> bool:
        """Cancel at once, or, when running, as for pause; the kind's on_cancel cleans up."""
        return self.ask(Requested.CANCEL, CANCELLABLE)

    def ask(self, requested: str, stoppable: list[str]) -> bool:
        """Record the request on the row, then carry it out at once if the job is in a
        `stoppable` status; a running job's runner (or the reaper) carries it out. False
        when the job is neither stoppable nor running, or a cancel is already pending."""
        weaker = ESCALATION[: ESCALATION.index(requested) + 1]
        askable = Job.objects.filter(pk=self.pk, status__in=[*stoppable, Status.RUNNING])
        asked = askable.filter(requested__in=weaker).update(
            requested=requested, updated_at=timezone.now()
        )
        if not asked:
            self.refresh_from_db()
            return False
        self.stop_as_asked(requested, stoppable)
        return True

    def stop_as_asked(self, requested: str, stoppable: list[str]) -> None:
        # A second compare-and-set: a job that started running since the request was
        # recorded is left to its runner, which meets the request on the row.
        now = timezone.now()
        waiting = Job.objects.filter(pk=self.pk, status__in=stoppable, requested=requested)
        stopped = waiting.update(**request_end(requested, now), updated_at=now)
        self.refresh_from_db()
        job_changed.send(sender=Job, job=self)
        if stopped and self.status == Status.CANCELLED:
            run_cancel_hook(self)

    def resume(self) -> bool:
        return self.requeue([Status.PAUSED])

    def dismiss(self) -> bool:
        """Put a failed job away (failed → cancelled, with the cancel cleanup): the user
        gave up on it, so it stops asking for attention."""
        moved = self.transition(
            [Status.FAILED],
            status=Status.CANCELLED,
            error_category=Category.CANCELLED,
            error_message=f"Dismissed after it failed: {self.error_message}",
        )
        if moved:
            run_cancel_hook(self)
        return moved

    def retry_now(self) -> bool:
        """Run a waiting, paused, failed or cancelled job at once, with fresh failure
        counts (a cancelled one starts over from what its cancel cleanup left)."""
        stopped = [Status.WAITING, Status.PAUSED, Status.FAILED, Status.CANCELLED]
        return self.requeue(stopped, integrity_restarts=0, finished_at=None)

    def requeue(self, from_statuses, **fields) -> bool:
        """Queue the job again, with fresh failure counts, and hand it to the cluster.

        A cancel recorded on the row a moment earlier (asked, not yet carried out: see
        `ask`) wins over this later click: it is carried out instead, never dropped."""
        now = timezone.now()
        rows = Job.objects.filter(pk=self.pk, status__in=from_statuses)
        moved = rows.exclude(requested=Requested.CANCEL).update(
            status=Status.QUEUED,
            next_attempt_at=None,
            transient_failures=0,
            lost_attempts=0,
            requested=Requested.NOTHING,
            dispatched_at=None,
            updated_at=now,
            **fields,
        )
        self.refresh_from_db()
        if moved:
            job_changed.send(sender=Job, job=self)
            self.dispatch()
        elif self.requested == Requested.CANCEL:
            self.stop_as_asked(Requested.CANCEL, CANCELLABLE)
        return bool(moved)

    def dispatch(self) -> None:
        """Hand the job to the worker cluster once the current transaction commits."""
        pk = self.pk
        Job.objects.filter(pk=pk).update(dispatched_at=timezone.now())
        transaction.on_commit(lambda: async_task("recovery.engine.work", pk, group="jobs"))


class Attempt(models.Model):
    """One try at a job: when, by whom, how it ended and why."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    owner = models.CharField(max_length=128, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    category = models.CharField(max_length=16, choices=Category.choices, blank=True)
    message = models.TextField(blank=True)
    detail = models.TextField(blank=True)
    progress_from = models.BigIntegerField(default=0)
    progress_to = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["job_id", "number", "id"]
        indexes = [models.Index(fields=["outcome", "finished_at"])]

    def __str__(self) -> str:
        return f"attempt {self.number} of job {self.job_id}: {self.outcome}"

    @property
    def duration(self) -> timedelta | None:
        return self.finished_at - self.started_at if self.finished_at else None

    def close(self, outcome: str, failure=None, progress_to: int | None = None, now=None):
        self.outcome, self.finished_at = outcome, now or timezone.now()
        self.progress_to = progress_to
        if failure is not None:
            self.category, self.message, self.detail = (
                failure.category,
                failure.message,
                failure.detail,
            )
        self.save()


class CircuitBreaker(models.Model):
    """Per-key (e.g. host) breaker shared by every process through the database.

    Closed: jobs run. After RECOVERY_BREAKER_THRESHOLD consecutive transient failures it
    opens: jobs for the key wait. After the cooldown, exactly one job claims the half-open
    probe (compare-and-set); its success closes the breaker, its failure re-opens it with
    twice the cooldown. Callers go through `guard`, which asks, runs and records.
    """

    key = models.CharField(max_length=200, unique=True)
    state = models.CharField(
        max_length=16, choices=BreakerState.choices, default=BreakerState.CLOSED
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    cooldown_seconds = models.FloatField(default=0)
    probe_owner = models.CharField(max_length=128, blank=True)
    probe_claimed_at = models.DateTimeField(null=True, blank=True)
    trips = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.key}: {self.state}"

    @property
    def next_probe_at(self):
        if self.opened_at is None:
            return None
        return self.opened_at + timedelta(seconds=self.cooldown_seconds)

    @property
    def probe_in(self) -> int | None:
        """Whole seconds until the next probe may run (0: now); None when closed."""
        return seconds_until(self.next_probe_at)

    @classmethod
    @contextmanager
    def guard(
        cls,
        key: str,
        owner: str = "",
        now: datetime | None = None,
        *,
        progressed: Callable[[], bool] = lambda: False,
    ) -> Iterator[None]:
        """Run a block behind the breaker for `key`: allow, run, record.

            with CircuitBreaker.guard(urlsplit(url).netloc):
                response = httpx.get(url)

        Before the block: unless `owner` (default: this process) may call `key` at `now`
        (default: timezone.now()), raises `recovery.errors.BreakerOpen` with `retry_at`,
        when to look again, and the block does not run. That is while the breaker is
        open, or while another process holds its half-open probe.

        After the block, how it went is recorded (and the exception, if any, propagates):
        - it returned: a success (closes a half-open breaker, resets the failure count);
        - it raised a transient failure (network, timeout, server, rate limited; see
          recovery.classify): one failure towards opening the breaker, or re-opening a
          half-open one; unless `progressed()` says the block moved forward first: a host
          that sent bytes before the connection dropped is up, so that is a success;
        - it raised any other failure (404, refused token, bad data, full disk): the host
          answered, a success;
        - it raised a stop that says nothing of the host (errors.STOPS: pause, cancel,
          lease lost, Defer, a nested guard's BreakerOpen): nothing is recorded.
        An empty `key` means no breaker: the block just runs.
        """
        if not key:
            yield
            return
        allowed, retry_at = cls.allow(key, owner or process_name(), now or timezone.now())
        if not allowed:
            raise BreakerOpen(key, retry_at)
        try:
            yield
        except STOPS:
            raise
        except Exception as exc:
            if classify(exc).transient and not progressed():
                cls.record_failure(key, timezone.now())
            else:
                cls.record_success(key, timezone.now())
            raise
        cls.record_success(key, timezone.now())

    @classmethod
    def for_key(cls, key: str) -> "CircuitBreaker":
        breaker, _ = cls.objects.get_or_create(key=key)
        return breaker

    @classmethod
    def allow(cls, key: str, owner: str, now):
        """(True, None) if `owner` may call `key` now, else (False, when to look again)."""
        breaker = cls.for_key(key)
        if breaker.state == BreakerState.CLOSED or breaker.probe_owner == owner:
            return True, None
        probe_due = (breaker.state == BreakerState.OPEN and now >= breaker.next_probe_at) or (
            breaker.state == BreakerState.HALF_OPEN and breaker.probe_is_stale(now)
        )
        if probe_due and breaker.claim_probe(owner, now):
            return True, None
        if breaker.state == BreakerState.OPEN and now < breaker.next_probe_at:
            return False, breaker.next_probe_at
        return False, now + timedelta(seconds=max(1.0, breaker.cooldown_seconds))

    def probe_is_stale(self, now) -> bool:
        # The prober died holding the claim: let another job probe after one lease.
        return now >= self.probe_claimed_at + timedelta(seconds=setting("RECOVERY_LEASE_SECONDS"))

    def claim_probe(self, owner: str, now) -> bool:
        won = CircuitBreaker.objects.filter(
            pk=self.pk, state=self.state, probe_claimed_at=self.probe_claimed_at
        )
        return bool(
            won.update(
                state=BreakerState.HALF_OPEN,
                probe_owner=owner,
                probe_claimed_at=now,
                updated_at=now,
            )
        )

    @classmethod
    def record_success(cls, key: str, now) -> None:
        cls.objects.filter(key=key).update(
            state=BreakerState.CLOSED,
            consecutive_failures=0,
            opened_at=None,
            cooldown_seconds=0,
            probe_owner="",
            probe_claimed_at=None,
            updated_at=now,
        )

    @classmethod
    def record_failure(cls, key: str, now) -> None:
        breaker = cls.for_key(key)
        if breaker.state == BreakerState.HALF_OPEN:
            cooldown = min(breaker.cooldown_seconds * 2, setting("RECOVERY_BREAKER_MAX_COOLDOWN"))
            breaker.trip(now, cooldown)
            return
        cls.objects.filter(pk=breaker.pk).update(consecutive_failures=F("consecutive_failures") + 1)
        breaker.refresh_from_db()
        if breaker.state == BreakerState.CLOSED and (
            breaker.consecutive_failures >= setting("RECOVERY_BREAKER_THRESHOLD")
        ):
            breaker.trip(now, setting("RECOVERY_BREAKER_COOLDOWN"))

    def trip(self, now, cooldown: float) -> None:
        CircuitBreaker.objects.filter(pk=self.pk).update(
            state=BreakerState.OPEN,
            opened_at=now,
            cooldown_seconds=cooldown,
            probe_owner="",
            probe_claimed_at=None,
            trips=F("trips") + 1,
            updated_at=now,
        )


class WorkerHeartbeat(models.Model):
    """Written every tick by each running worker cluster; /healthz reads it."""

    name = models.CharField(max_length=128, unique=True)
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.name} (seen {self.seen_at:%H:%M:%S})"

    @classmethod
    def beat(cls, name: str) -> None:
        cls.objects.update_or_create(name=name, defaults={"seen_at": timezone.now()})

    @classmethod
    def alive(cls, stale: float, now=None) -> bool:
        since = (now or timezone.now()) - timedelta(seconds=stale)
        return cls.objects.filter(seen_at__gte=since).exists()
