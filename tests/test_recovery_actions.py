"""What the pages ask of jobs and breakers lives on the models: the action dispatch
(Job.act) and the countdowns (Job.retry_in, CircuitBreaker.probe_in)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from recovery.models import USER_ACTIONS, BreakerState, CircuitBreaker, Job, Status

pytestmark = pytest.mark.django_db


def test_a_job_carries_out_the_actions_its_buttons_offer_by_name():
    job = Job.objects.create(kind="k")
    assert job.act("pause") and job.status == Status.PAUSED
    assert job.act("retry") and job.status == Status.QUEUED
    assert not job.act("resume")
    assert set(USER_ACTIONS) == {"pause", "resume", "cancel", "retry", "dismiss"}


def test_a_job_refuses_an_action_no_button_offers():
    job = Job.objects.create(kind="k")
    for name in ("delete", "write", "__class__"):
        with pytest.raises(ValueError, match="no job action"):
            job.act(name)
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED


def test_a_waiting_job_counts_whole_seconds_down_to_its_next_try():
    soon = timezone.now() + timedelta(seconds=7.5)
    assert Job(status=Status.WAITING, next_attempt_at=soon).retry_in == 8
    assert Job(status=Status.WAITING, next_attempt_at=soon - timedelta(minutes=1)).retry_in == 0
    assert Job(status=Status.PAUSED, next_attempt_at=soon).retry_in is None


def test_an_open_breaker_counts_whole_seconds_down_to_its_next_probe():
    opened = timezone.now() - timedelta(seconds=20.5)
    breaker = CircuitBreaker(state=BreakerState.OPEN, opened_at=opened, cooldown_seconds=30)
    assert breaker.probe_in == 10
    assert CircuitBreaker(state=BreakerState.CLOSED).probe_in is None
