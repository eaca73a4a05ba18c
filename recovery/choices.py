"""The recovery vocabulary: job statuses, error categories, attempt outcomes, user
requests and breaker states. One home for each list; every other module imports it."""

from django.db import models


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


# While a job runs its request only ever escalates, in this order (a pause never
# replaces a cancel), so a compare-and-set that tries each in turn always meets the row.
ESCALATION = (Requested.NOTHING, Requested.PAUSE, Requested.CANCEL)


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"
