"""recovery's settings, each with a default so the app works with none configured."""

from django.conf import settings

DEFAULTS = {
    "RECOVERY_LEASE_SECONDS": 30.0,  # a running job's lease; renewed every third of it
    "RECOVERY_PROGRESS_INTERVAL": 0.5,  # least seconds between two progress writes
    "RECOVERY_BACKOFF_SCALE": 1.0,  # multiplies every computed delay; tests set 0
    "RECOVERY_INLINE_RETRY_SECONDS": 1.0,  # a worker retries this soon in place, not later
    "RECOVERY_RETRY_AFTER_CAP": 3600.0,  # longest Retry-After honoured, seconds
    "RECOVERY_BREAKER_THRESHOLD": 5,  # consecutive transient failures that open a breaker
    "RECOVERY_BREAKER_COOLDOWN": 30.0,  # first open period, doubled on each failed probe
    "RECOVERY_BREAKER_MAX_COOLDOWN": 1800.0,
    "RECOVERY_MAX_LOST_ATTEMPTS": 3,  # tries in a row whose worker died without progress
    "RECOVERY_REDISPATCH_SECONDS": 300.0,  # re-send a queued job whose message got lost
    "RECOVERY_RETENTION_DAYS": 30,
    "RECOVERY_POLICIES": {},  # {category: {max_attempts, base, cap, jitter}} overrides
    "RECOVERY_KIND_POLICIES": {},  # {kind: {category: {...}}} overrides
    "RECOVERY_JOB_MODULES": [],  # extra modules to import for their @recoverable kinds
    "RECOVERY_SECRET_SETTINGS": [],  # setting names whose values are always redacted
    "RECOVERY_TICK_HOOKS": [],  # dotted callables the worker calls every tick
}


def setting(name: str):
    return getattr(settings, name, DEFAULTS[name])
