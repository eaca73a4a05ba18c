"""The recovery engine in-process: attempts, policies, breaker, leases, user actions."""

import os
import socket
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

import tests.jobkinds  # registers the test job kinds
from recovery.engine import execute, reap_expired, run_foreground, work
from recovery.maintenance import prune
from recovery.models import Attempt, BreakerState, CircuitBreaker, Job, Outcome, Status
from recovery.policy import policy_for
from recovery.signals import job_changed

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_backoff(settings):
    settings.RECOVERY_BACKOFF_SCALE = 0
    settings.RECOVERY_BREAKER_THRESHOLD = 3
    settings.RECOVERY_BREAKER_COOLDOWN = 60


def script(errors, **params) -> Job:
    return Job.objects.create(kind="test.script", params={"errors": errors, **params})


def outcomes(job: Job) -> list[str]:
    return list(job.attempts.values_list("outcome", flat=True))


def test_a_job_that_succeeds_records_one_successful_attempt():
    job = script([])
    assert execute(job.pk) == Status.SUCCEEDED
    assert outcomes(job) == [Outcome.SUCCEEDED]


def test_a_network_failure_is_scheduled_for_later_not_slept(settings):
    settings.RECOVERY_BACKOFF_SCALE = 1
    settings.RECOVERY_POLICIES = {"network": {"jitter": 0, "base": 2}}
    job = script(["network"])
    before = timezone.now()
    assert execute(job.pk) == Status.WAITING
    job.refresh_from_db()
    assert timedelta(seconds=2) <= job.next_attempt_at - before < timedelta(seconds=3)
    assert job.error_category == "network" and job.transient_failures == 1


def test_a_waiting_job_cannot_be_claimed_before_its_time(settings):
    settings.RECOVERY_BACKOFF_SCALE = 1
    job = script(["server", None])
    execute(job.pk)
    assert execute(job.pk) == Status.WAITING
    assert execute(job.pk, now=timezone.now() + timedelta(hours=1)) == Status.SUCCEEDED


def test_retry_after_is_honoured_and_capped(settings):
    settings.RECOVERY_RETRY_AFTER_CAP = 600
    job = script(["rate_limited", "rate_limited"], retry_after=90)
    before = timezone.now()
    execute(job.pk)
    job.refresh_from_db()
    assert timedelta(seconds=90) <= job.next_attempt_at - before < timedelta(seconds=91)
    assert policy_for("x", "rate_limited").delay(1, retry_after=10**6) == 600


def test_it_gives_up_after_max_attempts_without_progress(settings):
    settings.RECOVERY_POLICIES = {"timeout": {"max_attempts": 3}}
    job = script(["timeout"] * 5)
    statuses = [execute(job.pk) for _ in range(3)]
    assert statuses == [Status.WAITING, Status.WAITING, Status.FAILED]
    assert outcomes(job) == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]


def test_attempts_that_make_progress_reset_the_failure_count(settings):
    settings.RECOVERY_POLICIES = {"network": {"max_attempts": 3}}
    job = script(["network"] * 12, advance=True)
    while execute(job.pk) == Status.WAITING:
        pass
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.attempt == 13


def test_auth_fails_fast_with_the_users_message():
    job = script(["auth"])
    assert execute(job.pk) == Status.FAILED
    job.refresh_from_db()
    assert job.error_category == "auth" and job.error_message == "scripted auth"


def test_integrity_restarts_once_from_zero_then_fails():
    job = script(["integrity", "integrity"])
    Job.objects.filter(pk=job.pk).update(checkpoint_data={"offset": 10}, progress_done=10)
    assert execute(job.pk) == Status.QUEUED
    job.refresh_from_db()
    assert job.checkpoint_data == {} and job.progress_done == 0
    assert execute(job.pk) == Status.FAILED
    assert outcomes(job) == [Outcome.RESTARTED, Outcome.FAILED]


def test_disk_full_pauses_and_retry_now_resumes():
    job = script(["disk_full"])
    assert execute(job.pk) == Status.PAUSED
    job.refresh_from_db()
    assert job.retry_now() and job.status == Status.QUEUED
    assert execute(job.pk) == Status.SUCCEEDED


def test_a_running_job_stops_at_its_next_checkpoint_when_cancelled(tmp_path):
    log = tmp_path / "log"
    job = Job.objects.create(
        kind="test.self_interrupt", params={"action": "cancel", "log": str(log)}
    )
    assert execute(job.pk) == Status.CANCELLED
    assert log.read_text().split() == ["step", "0", "step", "1"]


def test_a_paused_job_resumes_from_its_checkpoint(tmp_path):
    log = tmp_path / "log"
    job = Job.objects.create(
        kind="test.self_interrupt", params={"action": "pause", "log": str(log)}
    )
    assert execute(job.pk) == Status.PAUSED
    job.refresh_from_db()
    assert job.checkpoint_data == {"done": 1} and job.resume()
    assert execute(job.pk) == Status.SUCCEEDED
    assert log.read_text().splitlines() == ["step 0", "step 1", "step 1", "step 2"]


def test_queued_jobs_pause_and_cancel_at_once():
    paused, cancelled = script([]), script([])
    assert paused.pause() and paused.status == Status.PAUSED
    assert cancelled.cancel() and cancelled.status == Status.CANCELLED
    assert execute(cancelled.pk) == Status.CANCELLED and not cancelled.attempts.exists()


def test_a_finished_job_cannot_be_paused_or_resumed():
    job = script([])
    execute(job.pk)
    job.refresh_from_db()
    assert not job.pause() and not job.resume() and not job.cancel()


def test_every_status_change_sends_the_live_hint():
    seen = []

    def receiver(sender, job, **kwargs):
        seen.append(job.status)

    job_changed.connect(receiver)
    try:
        execute(script(["network"]).pk)
    finally:
        job_changed.disconnect(receiver)
    assert seen[0] == Status.RUNNING and seen[-1] == Status.WAITING


def test_an_expired_lease_is_reclaimed_and_the_job_resumes_from_its_checkpoint(tmp_path):
    job = Job.objects.create(kind="test.steps", params={"steps": 3, "log": str(tmp_path / "l")})
    now = timezone.now()
    Job.objects.claim(job.pk, "dead:1", now)
    Attempt.objects.create(job=job, number=1, owner="dead:1")
    Job.objects.filter(pk=job.pk).update(checkpoint_data={"done": 2})
    assert reap_expired(now + timedelta(seconds=29)) == []
    assert reap_expired(now + timedelta(seconds=31)) == [job.pk]
    assert execute(job.pk) == Status.SUCCEEDED
    assert (tmp_path / "l").read_text().splitlines() == ["start 2", "end 2"]
    assert outcomes(job) == [Outcome.LOST, Outcome.SUCCEEDED]


def test_a_claimed_job_cannot_be_claimed_again():
    job = script([])
    now = timezone.now()
    assert Job.objects.claim(job.pk, "a:1", now) is not None
    assert Job.objects.claim(job.pk, "b:2", now) is None


def test_the_breaker_opens_after_n_failures_and_its_jobs_wait():
    for _ in range(3):
        execute(script(["network"], breaker_key="").pk)  # no key: no breaker
        job = script(["network"])
        Job.objects.filter(pk=job.pk).update(breaker_key="hf.example")
        execute(job.pk)
    assert CircuitBreaker.objects.get(key="hf.example").state == BreakerState.OPEN
    blocked = Job.objects.create(kind="test.script", breaker_key="hf.example")
    assert execute(blocked.pk) == Status.WAITING
    assert not blocked.attempts.exists()


def test_after_the_cooldown_exactly_one_probe_runs_and_its_success_closes_it():
    opened = timezone.now() - timedelta(seconds=61)
    CircuitBreaker.objects.create(
        key="h", state=BreakerState.OPEN, opened_at=opened, cooldown_seconds=60, trips=1
    )
    first, second = (Job.objects.create(kind="test.noop", breaker_key="h") for _ in "12")
    assert CircuitBreaker.allow("h", "w:1", timezone.now())[0] is True
    assert CircuitBreaker.allow("h", "w:2", timezone.now())[0] is False
    assert execute(first.pk, owner="w:1") == Status.SUCCEEDED
    assert CircuitBreaker.objects.get(key="h").state == BreakerState.CLOSED
    assert execute(second.pk, owner="w:2") == Status.SUCCEEDED


def test_a_failed_probe_reopens_the_breaker_with_a_longer_cooldown():
    opened = timezone.now() - timedelta(seconds=61)
    CircuitBreaker.objects.create(
        key="h", state=BreakerState.OPEN, opened_at=opened, cooldown_seconds=60, trips=1
    )
    probe = script(["server"])
    Job.objects.filter(pk=probe.pk).update(breaker_key="h")
    assert execute(probe.pk) == Status.WAITING
    breaker = CircuitBreaker.objects.get(key="h")
    assert (breaker.state, breaker.cooldown_seconds, breaker.trips) == ("open", 120, 2)


def test_run_foreground_waits_out_retries_with_the_injected_sleep(settings):
    settings.RECOVERY_BACKOFF_SCALE = 1
    settings.RECOVERY_POLICIES = {"server": {"jitter": 0, "base": 5}}
    job = script(["server", "server"])
    clock = [timezone.now()]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds))
        clock[0] += timedelta(seconds=seconds)

    finished = run_foreground(job.pk, sleep=sleep, clock=lambda: clock[0])
    assert finished.status == Status.SUCCEEDED and len(slept) == 2


def test_prune_removes_old_finished_jobs_and_never_unfinished_ones():
    old = timezone.now() - timedelta(days=40)
    done = Job.objects.create(kind="k", status=Status.SUCCEEDED, finished_at=old)
    Attempt.objects.create(job=done, number=1)
    waiting = Job.objects.create(kind="k", status=Status.WAITING, created_at=old)
    recent = Job.objects.create(kind="k", status=Status.FAILED, finished_at=timezone.now())
    assert prune(30) == 1
    assert set(Job.objects.values_list("pk", flat=True)) == {waiting.pk, recent.pk}
    assert not Attempt.objects.exists()


def test_a_token_never_reaches_any_job_or_attempt_field(settings):
    settings.HF_TOKEN = "hf_" + "s3cr3t" * 6
    settings.RECOVERY_SECRET_SETTINGS = ["HF_TOKEN"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = {"url": f"http://127.0.0.1:{port}/model.bin", "token": settings.HF_TOKEN}
    job = Job.objects.create(kind="test.leaky", params=params)
    assert execute(job.pk) == Status.WAITING
    job.refresh_from_db()
    assert job.error_category == "network"
    stored = [job.error_message, job.error_detail]
    stored += [v for a in job.attempts.values("message", "detail") for v in a.values()]
    assert all(settings.HF_TOKEN not in text for text in stored)
    assert "127.0.0.1" in job.error_message


def test_a_deferred_job_waits_without_counting_an_attempt(tmp_path):
    busy = tmp_path / "busy"
    busy.touch()
    job = Job.objects.create(kind="test.deferring", params={"busy_file": str(busy)})
    assert execute(job.pk) == Status.WAITING
    job.refresh_from_db()
    assert job.attempt == 0 and not job.attempts.exists()
    assert job.error_message == "Waiting for a free slot."
    busy.unlink()
    assert execute(job.pk, now=job.next_attempt_at) == Status.SUCCEEDED


def test_cancelling_a_queued_job_runs_its_cleanup_hook():
    job = Job.objects.create(kind="test.deferring")
    assert job.cancel()
    assert job.pk in tests.jobkinds.CANCELLED_JOBS


def test_a_job_held_by_a_dead_local_process_is_reclaimed_before_its_lease_runs_out():
    proc = subprocess.Popen(["true"])
    proc.wait()
    job = Job.objects.create(kind="test.noop")
    Job.objects.claim(job.pk, f"{socket.gethostname()}:{proc.pid}", timezone.now())
    assert reap_expired() == [job.pk]
    assert execute(job.pk) == Status.SUCCEEDED


def test_a_job_held_by_a_live_process_is_left_alone():
    job = Job.objects.create(kind="test.noop")
    Job.objects.claim(job.pk, f"{socket.gethostname()}:{os.getpid()}", timezone.now())
    assert reap_expired() == []


def test_the_worker_retries_a_short_delay_in_place(settings):
    settings.RECOVERY_INLINE_RETRY_SECONDS = 1
    job = script(["network", "network"])
    assert work(job.pk) == Status.SUCCEEDED
    assert outcomes(job) == [Outcome.RETRY, Outcome.RETRY, Outcome.SUCCEEDED]


def test_the_worker_leaves_a_long_delay_to_the_schedule(settings):
    settings.RECOVERY_BACKOFF_SCALE = 1
    job = script(["rate_limited"], retry_after=60)
    assert work(job.pk) == Status.WAITING
    assert outcomes(job) == [Outcome.RETRY]


def test_run_foreground_takes_over_from_a_dead_local_process_without_waiting():
    proc = subprocess.Popen(["true"])
    proc.wait()
    job = Job.objects.create(kind="test.noop")
    Job.objects.claim(job.pk, f"{socket.gethostname()}:{proc.pid}", timezone.now())
    slept = []
    assert run_foreground(job.pk, sleep=slept.append).status == Status.SUCCEEDED
    assert slept == []


def test_dismissing_a_failed_job_cancels_it_with_its_cleanup():
    job = Job.objects.create(kind="test.deferring", status=Status.FAILED, error_message="boom")
    assert job.dismiss() and job.status == Status.CANCELLED
    assert job.pk in tests.jobkinds.CANCELLED_JOBS and "boom" in job.error_message
    assert not Job.objects.create(kind="test.noop").dismiss()


def test_a_failure_after_progress_does_not_count_against_the_host():
    for _ in range(5):
        job = script(["network"], advance=True)
        Job.objects.filter(pk=job.pk).update(breaker_key="flaky.example")
        execute(job.pk)
    breaker = CircuitBreaker.objects.get(key="flaky.example")
    assert breaker.state == BreakerState.CLOSED and breaker.consecutive_failures == 0
