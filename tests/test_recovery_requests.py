"""Pause and Cancel are never lost: a request made while an attempt fails, waits or dies
is carried out by whoever ends the run (release, the reaper), and Retry works on every
job the pages offer it for."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

import tests.jobkinds
from recovery.engine import execute, reap_expired
from recovery.models import Attempt, Category, Job, Outcome, Requested, Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_backoff(settings):
    settings.RECOVERY_BACKOFF_SCALE = 0


def asked(action: str, category: str | None = Category.NETWORK) -> Job:
    params = {"action": action, "category": category}
    return Job.objects.create(kind="test.asked_then_ends", params=params)


def held_by_a_dead_worker(kind: str = "test.deferring") -> tuple[Job, datetime]:
    """A job claimed by a worker on another host that then died (its lease runs out)."""
    job = Job.objects.create(kind=kind)
    now = timezone.now()
    Job.objects.claim(job.pk, "gone:1", now)
    Attempt.objects.create(job=job, number=1, owner="gone:1", started_at=now)
    return Job.objects.get(pk=job.pk), now + timedelta(seconds=31)


def test_a_cancel_asked_while_an_attempt_fails_ends_the_job_cancelled_with_its_cleanup():
    job = asked("cancel")
    assert execute(job.pk) == Status.CANCELLED
    job.refresh_from_db()
    assert job.pk in tests.jobkinds.CANCELLED_JOBS and job.requested == Requested.NOTHING
    assert job.error_message == "Cancelled by the user." and job.next_attempt_at is None
    attempt = job.attempts.get()
    assert (attempt.outcome, attempt.category) == (Outcome.CANCELLED, Category.NETWORK)


def test_a_pause_asked_while_an_attempt_fails_ends_the_job_paused():
    job = asked("pause", Category.SERVER)
    assert execute(job.pk) == Status.PAUSED
    job.refresh_from_db()
    assert job.error_message == "Paused by the user." and job.next_attempt_at is None
    assert job.attempts.get().outcome == Outcome.PAUSED
    assert job.pk not in tests.jobkinds.CANCELLED_JOBS


def test_a_cancel_asked_while_an_attempt_fails_for_good_still_cleans_up():
    job = asked("cancel", Category.AUTH)
    assert execute(job.pk) == Status.CANCELLED
    assert job.pk in tests.jobkinds.CANCELLED_JOBS


def test_a_cancel_asked_of_a_job_whose_worker_died_is_carried_out_by_the_reaper():
    job, later = held_by_a_dead_worker()
    assert job.cancel() and job.status == Status.RUNNING
    assert reap_expired(later) == [job.pk]
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and job.pk in tests.jobkinds.CANCELLED_JOBS
    assert job.attempts.get().outcome == Outcome.LOST


def test_a_pause_asked_of_a_job_whose_worker_died_ends_it_paused_not_queued():
    job, later = held_by_a_dead_worker()
    assert job.pause()
    reap_expired(later)
    job.refresh_from_db()
    assert (job.status, job.requested) == (Status.PAUSED, Requested.NOTHING)
    assert job.resume() and execute(job.pk) == Status.SUCCEEDED


def test_a_pause_never_replaces_a_pending_cancel():
    job, _ = held_by_a_dead_worker()
    assert job.cancel() and not job.pause()
    assert Job.objects.get(pk=job.pk).requested == Requested.CANCEL


def test_retry_now_runs_a_cancelled_job_again():
    job = Job.objects.create(kind="test.noop", status=Status.CANCELLED, finished_at=timezone.now())
    assert job.retry_now() and job.status == Status.QUEUED and job.finished_at is None
    assert execute(job.pk) == Status.SUCCEEDED


@pytest.mark.parametrize("click", ["resume", "retry_now"])
def test_a_resume_landing_between_a_cancel_and_its_carrying_out_loses_to_the_cancel(click):
    job = Job.objects.create(kind="test.deferring", status=Status.PAUSED)
    # Cancel recorded its request; a Resume from another tab lands before it stops the job.
    Job.objects.filter(pk=job.pk).update(requested=Requested.CANCEL)
    assert getattr(Job.objects.get(pk=job.pk), click)() is False
    job.refresh_from_db()
    assert (job.status, job.requested) == (Status.CANCELLED, Requested.NOTHING)
    assert job.pk in tests.jobkinds.CANCELLED_JOBS
