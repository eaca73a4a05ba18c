import os
import socket
from datetime import timedelta

from django.db import models
from django.utils import timezone

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


def process_name() -> str:
    """Identifies this process as a lease owner / heartbeat writer."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=ACTIVE)


class Job(models.Model):
    """One long operation. The row is the truth; workers only ever act on what it says."""

    kind = models.CharField(max_length=64, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=5)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
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
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

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
