"""A worker that starts after a crash re-sends what the dead one had received."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.signing import SignedPackage

import tests.jobkinds  # noqa: F401  (registers the test job kinds)
from recovery.engine import dispatch_due
from recovery.models import Job, Status
from recovery.worker import resend_on_start

pytestmark = pytest.mark.django_db(transaction=True)


def deliverable() -> list[int]:
    """Job ids of every message the broker would hand a cluster now (taking them)."""
    broker, ids = get_broker(), []
    while broker.queue_size():
        ids += [SignedPackage.loads(payload)["args"][0] for _, payload in broker.dequeue()]
    return ids


@pytest.mark.skipif(
    bool(settings.REDIS_URL),
    reason="only the ORM broker locks messages; with Redis the re-send at start is "
    "test_a_due_job_whose_message_was_lost_is_sent_at_worker_start_not_minutes_later",
)
def test_a_message_a_killed_cluster_had_locked_is_handed_out_again_at_worker_start():
    job = Job.objects.create(kind="test.noop")
    job.dispatch()
    assert deliverable() == [job.pk]  # taken by a cluster that then died: locked for a day
    assert deliverable() == []
    resend_on_start()
    assert set(deliverable()) == {job.pk}


def test_a_due_job_whose_message_was_lost_is_sent_at_worker_start_not_minutes_later():
    lost = Job.objects.create(kind="test.noop", dispatched_at=timezone.now())
    later = timezone.now() + timedelta(hours=1)
    Job.objects.create(kind="test.noop", status=Status.WAITING, next_attempt_at=later)
    Job.objects.create(kind="test.noop", status=Status.RUNNING, lease_owner="alive:1")
    assert dispatch_due() == []
    assert resend_on_start() == [lost.pk]
    assert Job.objects.get(pk=lost.pk).dispatched_at > lost.dispatched_at
