from datetime import timedelta

from django.utils import timezone

from recovery.conf import setting
from recovery.models import TERMINAL, Job


def prune(days: int | None = None, now=None) -> int:
    """Delete finished jobs (and their attempts) older than `days`; never unfinished ones."""
    days = setting("RECOVERY_RETENTION_DAYS") if days is None else days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = Job.objects.filter(status__in=TERMINAL, finished_at__lt=cutoff)
    count = old.count()
    old.delete()
    return count
