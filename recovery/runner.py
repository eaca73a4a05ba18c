"""Job kinds, dispatch to the worker queue, and running one job."""

import logging
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from recovery.models import Job, Status, process_name

log = logging.getLogger(__name__)

JobFunc = Callable[[Job], None]
REGISTRY: dict[str, JobFunc] = {}


def job(kind: str) -> Callable[[JobFunc], JobFunc]:
    """Register `func(job)` as the code that runs jobs of this kind."""

    def register(func: JobFunc) -> JobFunc:
        REGISTRY[kind] = func
        return func

    return register


def enqueue(kind: str, params: dict | None = None) -> Job:
    if kind not in REGISTRY:
        raise LookupError(f"no job kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    created = Job.objects.create(kind=kind, params=params or {})
    dispatch(created)
    return created


def dispatch(queued: Job) -> None:
    """Hand the job to the worker cluster once the row is committed."""
    from django_q.tasks import async_task

    pk = queued.pk
    transaction.on_commit(lambda: async_task("recovery.runner.run", pk, group=queued.kind))


def run(job_id: int) -> str:
    """Claim the job (compare-and-set) and run it; return its final status."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING, lease_owner=process_name(), started_at=now, updated_at=now
    )
    current = Job.objects.filter(pk=job_id).first()
    if current is None:
        return "missing"  # a queue message that outlived its row (e.g. a shared broker)
    if not claimed:
        return current.status
    current.write()
    try:
        REGISTRY[current.kind](current)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        current.write(
            status=Status.FAILED,
            error_message=str(exc)[:500],
            finished_at=timezone.now(),
            lease_owner="",
        )
    else:
        current.write(status=Status.SUCCEEDED, finished_at=timezone.now(), lease_owner="")
    return current.status
