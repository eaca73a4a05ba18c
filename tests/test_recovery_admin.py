"""The admin shows recovery records read-only, with metrics and the retry/cancel actions."""

from datetime import UTC, datetime, timedelta

import pytest

from recovery.models import Attempt, CircuitBreaker, Job, Outcome, Status, WorkerHeartbeat

pytestmark = pytest.mark.django_db

T = datetime(2026, 1, 1, 12, tzinfo=UTC)
JOBS = "/admin/recovery/job/"


def listed(response) -> list[Job]:
    return list(response.context["cl"].result_list)


def test_the_job_list_shows_the_metrics_above_the_jobs(admin_client):
    job = Job.objects.create(
        kind="download", status=Status.SUCCEEDED, finished_at=T + timedelta(seconds=30)
    )
    Attempt.objects.create(job=job, number=1, outcome=Outcome.RETRY, finished_at=T)
    CircuitBreaker.objects.create(key="hf.co", trips=4)
    response = admin_client.get(JOBS)
    assert response.status_code == 200
    assert response.context["metrics"]["kinds"]["download"]["recovered"] == 1
    assert b"Recovery metrics" in response.content and b"100%" in response.content
    assert b"30 s" in response.content and b"Circuit breaker trips: 4" in response.content


def test_the_job_list_filters_by_status(admin_client):
    failed = Job.objects.create(kind="download", status=Status.FAILED)
    Job.objects.create(kind="download", status=Status.QUEUED)
    response = admin_client.get(JOBS, {"status__exact": "failed"})
    assert response.status_code == 200
    assert listed(response) == [failed]


def test_the_job_list_searches_error_messages_and_breaker_keys(admin_client):
    refused = Job.objects.create(kind="download", error_message="Connection refused")
    hf = Job.objects.create(kind="download", breaker_key="huggingface.co")
    assert listed(admin_client.get(JOBS, {"q": "refused"})) == [refused]
    assert listed(admin_client.get(JOBS, {"q": "huggingface"})) == [hf]


def test_retry_now_queues_a_failed_job_again(admin_client):
    job = Job.objects.create(kind="download", status=Status.FAILED, finished_at=T)
    response = admin_client.post(
        JOBS, {"action": "retry_now", "_selected_action": [job.pk]}, follow=True
    )
    job.refresh_from_db()
    assert job.status == Status.QUEUED and job.finished_at is None
    assert b"1 of 1 job(s) queued to run now." in response.content


def test_cancel_cancels_a_queued_job(admin_client):
    job = Job.objects.create(kind="download", status=Status.QUEUED)
    response = admin_client.post(JOBS, {"action": "cancel", "_selected_action": [job.pk]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Status.CANCELLED


def test_a_job_page_shows_its_error_detail_read_only_and_its_attempts(admin_client):
    job = Job.objects.create(kind="download", error_detail="Traceback: boom")
    Attempt.objects.create(job=job, number=1, outcome=Outcome.RETRY, message="reset by peer")
    response = admin_client.get(f"{JOBS}{job.pk}/change/")
    assert response.status_code == 200
    assert b"Traceback: boom" in response.content
    assert b'name="error_detail"' not in response.content
    assert b"reset by peer" in response.content


def test_a_job_page_cannot_change_the_status_by_hand(admin_client):
    job = Job.objects.create(kind="download", status=Status.FAILED)
    inline = {"attempts-TOTAL_FORMS": 0, "attempts-INITIAL_FORMS": 0}
    form = {"status": "succeeded", "max_attempts": 9, **inline}
    assert admin_client.post(f"{JOBS}{job.pk}/change/", form).status_code == 302
    job.refresh_from_db()
    assert (job.status, job.max_attempts) == (Status.FAILED, 9)


def test_attempts_breakers_and_heartbeats_are_listed_read_only(admin_client):
    job = Job.objects.create(kind="download")
    Attempt.objects.create(job=job, number=1, outcome=Outcome.RETRY, category="network")
    CircuitBreaker.objects.create(key="hf.co")
    WorkerHeartbeat.objects.create(name="host:1")
    attempts = admin_client.get("/admin/recovery/attempt/", {"outcome__exact": "retry"})
    assert attempts.status_code == 200 and len(listed(attempts)) == 1
    for model in ("circuitbreaker", "workerheartbeat"):
        assert admin_client.get(f"/admin/recovery/{model}/").status_code == 200
        assert admin_client.get(f"/admin/recovery/{model}/add/").status_code == 403
