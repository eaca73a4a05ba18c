"""Poison jobs end, and "attempt n of m" never reads n > m.

A worker that dies mid-attempt (out of memory, kill -9) leaves a lost attempt; the reaper
counts those in a row that made no progress and fails the job after
RECOVERY_MAX_LOST_ATTEMPTS. Progress between deaths resets the count.
"""

import os
import socket
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

import tests.jobkinds  # noqa: F401 (registers the test job kinds)
from recovery.engine import close_lost_attempts, execute, reap_after_restart, reap_expired
from recovery.models import Attempt, Category, Job, Outcome, Status

pytestmark = pytest.mark.django_db(transaction=True)

POISONED = "The worker stopped 3 times while running this job — out of memory?"


@pytest.fixture(autouse=True)
def no_backoff(settings):
    settings.RECOVERY_BACKOFF_SCALE = 0


def dies(job: Job, owner: str, now: datetime, moves: int = 0) -> datetime:
    """A worker on another host claims the job, moves it `moves` steps, and dies; the
    reaper finds it once the lease ran out. Returns the reaper's time."""
    job = Job.objects.claim(job.pk, owner, now)
    Attempt.objects.create(
        job=job, number=job.attempt, owner=owner, started_at=now, progress_from=job.progress_done
    )
    Job.objects.filter(pk=job.pk).update(progress_done=job.progress_done + moves)
    later = now + timedelta(seconds=31)
    assert reap_expired(later) == [job.pk]
    return later


def test_a_job_whose_worker_dies_three_times_without_progress_fails_with_a_plain_message():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    for owner in ("box:11", "box:12"):
        now = dies(job, owner, now)
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED
    now = dies(job, "box:13", now)
    job.refresh_from_db()
    assert (job.status, job.error_category) == (Status.FAILED, Category.UNKNOWN)
    assert job.error_message == POISONED and job.finished_at == now
    assert all(f"worker box:{pid}" in job.error_detail for pid in (11, 12, 13))
    assert list(job.attempts.values_list("outcome", flat=True)) == [Outcome.LOST] * 3


def test_a_big_download_killed_20_times_while_moving_forward_still_finishes():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    for kill in range(20):
        now = dies(job, f"box:{kill}", now, moves=1000)
    assert execute(job.pk, now=now) == Status.SUCCEEDED
    job.refresh_from_db()
    assert (job.attempt, job.max_attempts) == (21, 21)


def test_progress_between_deaths_starts_the_count_again():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    for owner, moves in (("a:1", 0), ("a:2", 0), ("a:3", 5), ("a:4", 0), ("a:5", 0)):
        now = dies(job, owner, now, moves)
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED
    dies(job, "a:6", now)
    assert Job.objects.get(pk=job.pk).error_message == POISONED


def test_an_attempt_that_ends_without_dying_breaks_the_row_of_deaths():
    errors = [None, None, "network", None, None, None]
    job = Job.objects.create(kind="test.script", params={"errors": errors})
    now = dies(job, "a:2", dies(job, "a:1", timezone.now()))
    assert execute(job.pk, now=now) == Status.WAITING
    now = dies(job, "a:5", dies(job, "a:4", now + timedelta(seconds=1)))
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED
    dies(job, "a:6", now)
    assert Job.objects.get(pk=job.pk).error_message == POISONED


def test_retry_now_gives_a_poisoned_job_a_fresh_count(settings):
    settings.RECOVERY_MAX_LOST_ATTEMPTS = 1
    job = Job.objects.create(kind="test.noop")
    now = dies(job, "a:1", timezone.now())
    job.refresh_from_db()
    assert job.status == Status.FAILED and job.retry_now()
    assert execute(job.pk, now=now) == Status.SUCCEEDED


def test_attempt_never_reads_above_its_maximum_as_failures_with_and_without_progress_mount(
    settings,
):
    settings.RECOVERY_POLICIES = {Category.NETWORK: {"max_attempts": 3}}
    job = Job.objects.create(
        kind="test.script", params={"errors": ["network"] * 6, "advance_on": [2]}
    )
    seen = []
    while execute(job.pk) == Status.WAITING:
        job.refresh_from_db()
        seen.append((job.attempt, job.max_attempts))
    job.refresh_from_db()
    assert seen == [(1, 3), (2, 4), (3, 4)]
    assert (job.status, job.attempt, job.max_attempts) == (Status.FAILED, 4, 4)


def test_attempts_that_keep_moving_forward_keep_raising_the_maximum(settings):
    settings.RECOVERY_POLICIES = {Category.NETWORK: {"max_attempts": 3}}
    job = Job.objects.create(kind="test.script", params={"errors": ["network"] * 9, "advance": 1})
    while execute(job.pk) == Status.WAITING:
        job.refresh_from_db()
        assert job.max_attempts == job.attempt + 2
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


def test_a_try_started_after_its_worker_died_is_within_the_maximum():
    job, now = Job.objects.create(kind="test.noop", max_attempts=1), timezone.now()
    now = dies(job, "a:1", now, moves=1)
    Job.objects.claim(job.pk, "a:2", now)
    job.refresh_from_db()
    assert (job.attempt, job.max_attempts) == (2, 2)


def a_dead_local_owner() -> str:
    """A process of this host that has exited (pids above pid_max never run)."""
    return f"{socket.gethostname()}:{2**22 + 1}"


def test_the_whole_app_going_down_five_times_is_not_held_against_its_jobs():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    for _ in range(5):
        owner = a_dead_local_owner()
        Job.objects.claim(job.pk, owner, now)
        Attempt.objects.create(job=job, number=job.attempt + 1, owner=owner, started_at=now)
        assert reap_after_restart(now) == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.lost_attempts) == (Status.QUEUED, 0)
    assert execute(job.pk) == Status.SUCCEEDED


def test_after_a_restart_the_run_of_a_live_process_is_left_alone():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    Job.objects.claim(job.pk, f"{socket.gethostname()}:{os.getpid()}", now)
    assert reap_after_restart(now) == []
    assert Job.objects.get(pk=job.pk).status == Status.RUNNING


def test_a_try_claimed_between_the_take_back_and_the_bookkeeping_is_not_marked_lost():
    job, now = Job.objects.create(kind="test.noop"), timezone.now()
    gone = Job.objects.claim(job.pk, "box:1", now)
    Attempt.objects.create(job=gone, number=gone.attempt, owner="box:1", started_at=now)
    assert gone.take_back({"status": Status.QUEUED}, now)
    fresh = Job.objects.claim(job.pk, "box:2", now)  # a duplicate message, right then
    Attempt.objects.create(job=fresh, number=fresh.attempt, owner="box:2", started_at=now)
    close_lost_attempts(gone, now)
    outcomes = dict(job.attempts.values_list("owner", "outcome"))
    assert outcomes == {"box:1": Outcome.LOST, "box:2": Outcome.RUNNING}
