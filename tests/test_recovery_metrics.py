"""Recovery metrics: failures, recoveries and time to recover, per kind and per category."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User

from recovery.metrics import compute
from recovery.models import Attempt, BreakerState, CircuitBreaker, Job, Outcome, Status

pytestmark = pytest.mark.django_db

T = datetime(2026, 1, 1, 12, tzinfo=UTC)
LOGIN_MW = "django.contrib.auth.middleware.LoginRequiredMiddleware"


def seconds(n: float) -> datetime:
    return T + timedelta(seconds=n)


def attempt(job: Job, outcome: str, finished_at: datetime, category: str = "") -> Attempt:
    number = job.attempts.count() + 1
    return Attempt.objects.create(
        job=job, number=number, outcome=outcome, finished_at=finished_at, category=category
    )


def test_a_job_that_recovers_counts_its_time_to_recover():
    job = Job.objects.create(kind="download", status=Status.SUCCEEDED, finished_at=seconds(30))
    attempt(job, Outcome.RETRY, T, "network")
    attempt(job, Outcome.SUCCEEDED, seconds(30))
    assert compute()["kinds"]["download"] == {
        "jobs": 1,
        "attempts": 2,
        "failures": 1,
        "failed_at_least_once": 1,
        "recovered": 1,
        "recovery_rate": 1.0,
        "mean_time_to_recover_seconds": 30.0,
    }


def test_a_job_that_fails_for_good_failed_at_least_once_but_did_not_recover():
    job = Job.objects.create(kind="install", status=Status.FAILED, finished_at=seconds(10))
    attempt(job, Outcome.RETRY, T, "server")
    attempt(job, Outcome.FAILED, seconds(10), "server")
    row = compute()["kinds"]["install"]
    assert (row["failures"], row["failed_at_least_once"], row["recovered"]) == (2, 1, 0)
    assert row["recovery_rate"] == 0.0
    assert row["mean_time_to_recover_seconds"] is None


def test_time_to_recover_runs_from_the_first_failure_and_is_averaged():
    slow = Job.objects.create(kind="download", status=Status.SUCCEEDED, finished_at=seconds(90))
    attempt(slow, Outcome.LOST, T)
    attempt(slow, Outcome.RESTARTED, seconds(60), "integrity")
    fast = Job.objects.create(kind="download", status=Status.SUCCEEDED, finished_at=seconds(40))
    attempt(fast, Outcome.RETRY, seconds(10), "timeout")
    assert compute()["kinds"]["download"]["mean_time_to_recover_seconds"] == 60.0


def test_a_kind_that_never_failed_has_no_rate_and_no_time_to_recover():
    job = Job.objects.create(kind="selftest", status=Status.SUCCEEDED, finished_at=T)
    attempt(job, Outcome.SUCCEEDED, T)
    row = compute()["kinds"]["selftest"]
    assert (row["attempts"], row["failures"], row["failed_at_least_once"]) == (1, 0, 0)
    assert row["recovery_rate"] is None and row["mean_time_to_recover_seconds"] is None


def test_categories_count_attempts_and_failures_and_skip_successes():
    job = Job.objects.create(kind="download", status=Status.CANCELLED)
    attempt(job, Outcome.RETRY, T, "network")
    attempt(job, Outcome.SUCCEEDED, seconds(1))
    attempt(job, Outcome.FAILED, seconds(2), "network")
    attempt(job, Outcome.CANCELLED, seconds(3), "cancelled")
    assert compute()["categories"] == {
        "cancelled": {"attempts": 1, "failures": 0},
        "network": {"attempts": 2, "failures": 2},
    }


def test_breakers_report_their_state_trips_and_next_probe():
    CircuitBreaker.objects.create(
        key="hf.co", state=BreakerState.OPEN, trips=3, opened_at=T, cooldown_seconds=60
    )
    CircuitBreaker.objects.create(key="civitai.com", trips=2)
    metrics = compute()
    assert metrics["breakers"]["hf.co"] == {
        "state": "open",
        "trips": 3,
        "next_probe_at": "2026-01-01T12:01:00+00:00",
    }
    assert metrics["breakers"]["civitai.com"]["next_probe_at"] is None
    assert metrics["totals"]["breaker_trips"] == 5


def test_totals_add_up_every_kind():
    recovered = Job.objects.create(kind="a", status=Status.SUCCEEDED, finished_at=seconds(20))
    attempt(recovered, Outcome.RETRY, T, "network")
    lost = Job.objects.create(kind="b", status=Status.FAILED, finished_at=seconds(5))
    attempt(lost, Outcome.FAILED, T, "auth")
    Job.objects.create(kind="c")
    totals = compute(now=T)["totals"]
    assert (totals["jobs"], totals["attempts"], totals["failures"]) == (3, 2, 2)
    assert (totals["failed_at_least_once"], totals["recovered"]) == (2, 1)
    assert totals["recovery_rate"] == 0.5 and totals["mean_time_to_recover_seconds"] == 20.0


def test_metrics_json_serves_the_numbers(client):
    job = Job.objects.create(kind="download", status=Status.SUCCEEDED, finished_at=seconds(30))
    attempt(job, Outcome.RETRY, T, "network")
    response = client.get("/recovery/metrics.json")
    assert response.status_code == 200
    body = json.loads(response.content)
    assert set(body) == {"generated_at", "kinds", "categories", "breakers", "totals"}
    assert body["kinds"]["download"]["recovery_rate"] == 1.0
    assert body["totals"]["breaker_trips"] == 0


def test_metrics_json_refuses_post(client):
    assert client.post("/recovery/metrics.json").status_code == 405


def test_metrics_json_needs_a_login_off_loopback(client, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, LOGIN_MW]
    assert client.get("/recovery/metrics.json").status_code == 302
    client.force_login(User.objects.create_user("ada"))
    assert client.get("/recovery/metrics.json").status_code == 200
