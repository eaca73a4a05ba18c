"""CircuitBreaker.guard: allow, run, record — the one way any caller talks to a host
behind its breaker — and a foreground run that waits on an open breaker says so."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

import tests.jobkinds  # noqa: F401 (registers the test job kinds)
from recovery.classify import classify
from recovery.engine import run_foreground
from recovery.errors import BreakerOpen, JobError, PauseRequested
from recovery.models import BreakerState, Category, CircuitBreaker, Job, Status
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def threshold(settings):
    settings.RECOVERY_BREAKER_THRESHOLD = 2
    settings.RECOVERY_BREAKER_COOLDOWN = 60


def opened(key: str = "h", seconds_ago: float = 0, cooldown: float = 60) -> CircuitBreaker:
    when = timezone.now() - timedelta(seconds=seconds_ago)
    return CircuitBreaker.objects.create(
        key=key, state=BreakerState.OPEN, opened_at=when, cooldown_seconds=cooldown, trips=1
    )


def ask(url: str) -> bytes:
    """A caller like the ComfyUI-Manager data download: one URL behind its host's breaker."""
    with CircuitBreaker.guard(httpx.URL(url).netloc.decode()):
        response = httpx.get(url, timeout=5)
        response.raise_for_status()
        return response.content


def test_a_host_that_keeps_failing_is_asked_no_more_once_its_breaker_opens():
    with FileServer() as server:
        url = server.add("list.json", b"[]", script=["status:503", "status:503"])
        for _ in range(2):  # RECOVERY_BREAKER_THRESHOLD
            with pytest.raises(httpx.HTTPStatusError):
                ask(url)
        with pytest.raises(BreakerOpen) as refused:
            ask(url)
        assert len(server.requests) == 2
    breaker = CircuitBreaker.objects.get()
    assert breaker.state == BreakerState.OPEN and refused.value.retry_at == breaker.next_probe_at


def test_a_successful_block_closes_a_half_open_breaker():
    opened(seconds_ago=61)
    with FileServer() as server, CircuitBreaker.guard("h"):
        httpx.get(server.add("a", b"ok"), timeout=5).raise_for_status()
    assert CircuitBreaker.objects.get().state == BreakerState.CLOSED


def test_a_failure_after_progress_counts_as_a_success_for_the_host():
    CircuitBreaker.objects.create(key="h", consecutive_failures=1)
    with pytest.raises(httpx.ReadError), CircuitBreaker.guard("h", progressed=lambda: True):
        raise httpx.ReadError("connection dropped mid-body")
    assert CircuitBreaker.objects.get().consecutive_failures == 0


def test_an_answer_that_is_not_a_transient_failure_counts_as_the_host_being_up():
    opened(seconds_ago=61)
    with pytest.raises(JobError), CircuitBreaker.guard("h"):
        raise JobError("No such file.", category=Category.NOT_FOUND)
    assert CircuitBreaker.objects.get().state == BreakerState.CLOSED


def test_a_pause_inside_the_block_says_nothing_about_the_host():
    opened(seconds_ago=61)
    with pytest.raises(PauseRequested), CircuitBreaker.guard("h", owner="w:1"):
        raise PauseRequested()
    breaker = CircuitBreaker.objects.get()
    assert (breaker.state, breaker.probe_owner) == (BreakerState.HALF_OPEN, "w:1")


def test_without_a_key_the_block_just_runs():
    ran = []
    with CircuitBreaker.guard(""):
        ran.append(True)
    assert ran == [True] and not CircuitBreaker.objects.exists()


def test_an_open_breaker_is_classified_as_a_wait_with_its_plain_message():
    retry_at = timezone.now() + timedelta(seconds=90)
    failure = classify(
        BreakerOpen("huggingface.co", retry_at), now=retry_at - timedelta(seconds=90)
    )
    assert (failure.category, failure.retry_after) == (Category.SERVER, 90)
    assert failure.message.startswith("huggingface.co failed several times in a row")


@pytest.mark.django_db(transaction=True)
def test_a_foreground_run_waiting_on_an_open_breaker_says_why_and_for_how_long():
    breaker = opened("files.example", cooldown=45)
    job = Job.objects.create(kind="test.noop", breaker_key="files.example")
    clock, waits = [timezone.now()], []

    def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)

    def on_wait(waiting: Job, seconds: float) -> None:
        waits.append((waiting.status, waiting.error_message, round(seconds)))

    finished = run_foreground(job.pk, sleep=sleep, clock=lambda: clock[0], on_wait=on_wait)
    assert finished.status == Status.SUCCEEDED and len(waits) == 1
    status, message, seconds = waits[0]
    assert status == Status.WAITING and 0 < seconds <= 45
    assert message.startswith("files.example failed several times in a row")
    assert f"{breaker.next_probe_at:%H:%M:%S} UTC" in message


@pytest.mark.django_db(transaction=True)
def test_a_kind_with_reroute_leaves_an_open_breaker_for_another_key_at_once():
    opened("a.example")
    opened("b.example")
    params = {"keys": ["a.example", "b.example", "c.example"]}
    job = Job.objects.create(kind="test.rerouted", breaker_key="a.example", params=params)
    finished = run_foreground(job.pk, sleep=lambda seconds: pytest.fail("it waited"))
    assert finished.status == Status.SUCCEEDED
    assert finished.checkpoint_data == {"ran_behind": "c.example"}


@pytest.mark.django_db(transaction=True)
def test_a_job_with_nowhere_else_to_go_waits_on_its_breaker():
    opened("a.example")
    for params in ({"keys": ["a.example"]}, {"stubborn": True}):
        job = Job.objects.create(kind="test.rerouted", breaker_key="a.example", params=params)
        run_foreground(job.pk, sleep=lambda seconds, pk=job.pk: Job.objects.get(pk=pk).pause())
        job.refresh_from_db()
        assert job.status == Status.PAUSED and job.checkpoint_data == {}
