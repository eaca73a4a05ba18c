"""The worker cluster's own loop beside django-q2: heartbeat, lease reaping, due jobs."""

import logging
import time

from django.db import close_old_connections
from django.utils.module_loading import import_string

from recovery.conf import setting
from recovery.engine import dispatch_due, reap_expired
from recovery.models import WorkerHeartbeat

log = logging.getLogger(__name__)

PRUNE_SCHEDULE = "recovery: prune finished jobs"


def tick(name: str) -> None:
    WorkerHeartbeat.beat(name)
    reclaimed = reap_expired()
    if reclaimed:
        log.warning("reclaimed jobs with expired leases: %s", reclaimed)
    dispatch_due()
    for hook in setting("RECOVERY_TICK_HOOKS"):
        import_string(hook)()


def ensure_schedules() -> None:
    from django_q.models import Schedule

    Schedule.objects.get_or_create(
        name=PRUNE_SCHEDULE,
        defaults={"func": "recovery.maintenance.prune", "schedule_type": Schedule.DAILY},
    )


def run_cluster(name: str, interval: float) -> None:
    """Start the django-q2 cluster and tick until it is told to stop (SIGTERM/SIGINT)."""
    from django.db import connections
    from django_q.cluster import Cluster

    ensure_schedules()
    # The cluster forks; a connection opened before the fork must not be shared.
    connections.close_all()
    cluster = Cluster()
    cluster.start()
    try:
        while cluster.stop_event is not None and cluster.sentinel.is_alive():
            close_old_connections()
            try:
                tick(name)
            except Exception:
                log.exception("worker tick failed; retrying next tick")
            time.sleep(interval)
    finally:
        if cluster.stop_event is not None:
            cluster.stop()
        WorkerHeartbeat.objects.filter(name=name).delete()
