"""The worker cluster's own loop beside django-q2: heartbeat, lease reaping, due jobs."""

import logging
import time
from datetime import datetime

from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.cluster import Cluster
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule

from recovery.conf import setting
from recovery.engine import dispatch_due, reap_after_restart, reap_expired
from recovery.lifeline import tie_forks_to_parent
from recovery.models import Job, WorkerHeartbeat

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
    Schedule.objects.get_or_create(
        name=PRUNE_SCHEDULE,
        defaults={"func": "recovery.maintenance.prune", "schedule_type": Schedule.DAILY},
    )


def resend_on_start(now: datetime | None = None) -> list[int]:
    """Send every due job to the cluster again, now, instead of in
    RECOVERY_REDISPATCH_SECONDS: a worker that starts may follow one that was killed
    holding queue messages (popped off Redis into its memory, or locked for a day in the
    ORM broker), and their jobs would sit queued, attempt 0, until then.

    Other workers sharing the database may hold live messages for some of these jobs, so
    a job can now have more than one. That is harmless: a message only calls execute(),
    whose claim is a compare-and-set on the job row, so one message runs the job and the
    others find it taken (or no longer due) and do nothing.
    """
    now = now or timezone.now()
    release_orm_locks(now)
    Job.objects.due(now).update(dispatched_at=None)
    return dispatch_due(now)


def release_orm_locks(now: datetime) -> int:
    """Make the ORM broker hand out its locked messages again: a killed cluster's lock
    would otherwise hold them for Q_CLUSTER["retry"] (a day), then deliver them as late
    duplicates. Redis keeps no such locks; what a dead cluster popped is simply gone."""
    broker = get_broker()
    if not isinstance(broker, ORM):
        return 0
    locked = OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__gt=now)
    return locked.update(lock=now)


def run_cluster(name: str, interval: float) -> None:
    """Start the django-q2 cluster and tick until it is told to stop (SIGTERM/SIGINT)."""
    ensure_schedules()
    taken_back = reap_after_restart()
    if taken_back:
        log.warning("resuming jobs that were running when the app stopped: %s", taken_back)
    resent = resend_on_start()
    if resent:
        log.warning("sent again at start, their messages may have died with a worker: %s", resent)
    # The cluster forks; a connection opened before the fork must not be shared.
    connections.close_all()
    # The sentinel and the processes it forks must not outlive this process.
    tie_forks_to_parent()
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
