import os
import socket
import time
from datetime import timedelta

from django.db import models, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from recovery.conf import setting
from recovery.signals import job_changed


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING})


class Category(models.TextChoices):
    NETWORK = "network", "Network"
    TIMEOUT = "timeout", "Timeout"
    SERVER = "server", "Server error"
    RATE_LIMITED = "rate_limited", "Rate limited"
    AUTH = "auth", "Authentication"
    NOT_FOUND = "not_found", "Not found"
    INTEGRITY = "integrity", "Integrity"
    DISK_FULL = "disk_full", "Disk full"
    PERMISSION = "permission", "Permission"
    VALIDATION = "validation", "Invalid input"
    DEPENDENCY = "dependency", "Dependency"
    CANCELLED = "cancelled", "Cancelled"
    UNKNOWN = "unknown", "Unknown"


class Outcome(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    RETRY = "retry", "Failed, will retry"
    FAILED = "failed", "Failed"
    PAUSED = "paused", "Paused"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Worker lost"
    RESTARTED = "restarted", "Restarting from zero"


class Requested(models.TextChoices):
    NOTHING = "", "Nothing"
    PAUSE = "pause", "Pause"
    CANCEL = "cancel", "Cancel"


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
    """One long operation. The row is the truth; workers only ever act on what it says."""

    kind = models.CharField(max_length=64, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=5)
    transient_failures = models.PositiveIntegerField(default=0)
    integrity_restarts = models.PositiveIntegerField(default=0)
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
        from recovery.errors import Cancelled, LeaseLost, PauseRequested

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
        """End this process's run: write `fields` only if it still holds the lease."""
        fields.update(lease_owner="", lease_expires_at=None, requested=Requested.NOTHING)
        fields["updated_at"] = timezone.now()
        mine = Job.objects.filter(pk=self.pk, status=Status.RUNNING, lease_owner=self.owner)
        if not mine.update(**fields):
            self.refresh_from_db()  # someone else owns it now; show their truth
            return False
        for name, value in fields.items():
            setattr(self, name, value)
        job_changed.send(sender=Job, job=self)
        return True

    # -- user actions ----------------------------------------------------------------------

    def pause(self) -> bool:
        if self.status == Status.RUNNING:
            return self.transition([Status.RUNNING], requested=Requested.PAUSE)
        return self.transition([Status.QUEUED, Status.WAITING], status=Status.PAUSED)

    def resume(self) -> bool:
        moved = self.transition(
            [Status.PAUSED],
            status=Status.QUEUED,
            next_attempt_at=None,
            transient_failures=0,
            requested=Requested.NOTHING,
            dispatched_at=None,
        )
        if moved:
            self.dispatch()
        return moved

    def cancel(self) -> bool:
        """Cancel now, or (when running) at the task's next checkpoint; runs on_cancel."""
        if self.status == Status.RUNNING:
            return self.transition([Status.RUNNING], requested=Requested.CANCEL)
        stoppable = [Status.QUEUED, Status.WAITING, Status.PAUSED]
        moved = self.transition(
            stoppable,
            status=Status.CANCELLED,
            finished_at=timezone.now(),
            error_category=Category.CANCELLED,
            error_message="Cancelled by the user.",
        )
        if moved:
            from recovery.engine import run_cancel_hook

            run_cancel_hook(self)
        return moved

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
            from recovery.engine import run_cancel_hook

            run_cancel_hook(self)
        return moved

    def retry_now(self) -> bool:
        """Run a waiting, paused or failed job at once, with a fresh failure count."""
        moved = self.transition(
            [Status.WAITING, Status.PAUSED, Status.FAILED],
            status=Status.QUEUED,
            next_attempt_at=None,
            transient_failures=0,
            integrity_restarts=0,
            requested=Requested.NOTHING,
            finished_at=None,
            dispatched_at=None,
        )
        if moved:
            self.dispatch()
        return moved

    def dispatch(self) -> None:
        """Hand the job to the worker cluster once the current transaction commits."""
        from django_q.tasks import async_task

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


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"


class CircuitBreaker(models.Model):
    """Per-key (e.g. host) breaker shared by every process through the database.

    Closed: jobs run. After RECOVERY_BREAKER_THRESHOLD consecutive transient failures it
    opens: jobs for the key wait. After the cooldown, exactly one job claims the half-open
    probe (compare-and-set); its success closes the breaker, its failure re-opens it with
    twice the cooldown.
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
