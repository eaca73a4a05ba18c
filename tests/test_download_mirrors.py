"""Mirrors: one download with several sources goes on from the next when one fails for
good or rests behind an open breaker, keeping the bytes it has when the sha256 is known."""

import hashlib
import json
import os
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.template.loader import render_to_string
from django.utils import timezone

from comfyhub.library import mirrors
from comfyhub.library.models import Download
from comfyhub.library.paths import host_of
from recovery.choices import BreakerState
from recovery.engine import run_foreground
from recovery.models import CircuitBreaker, Status
from recovery.signals import job_changed
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db(transaction=True)

DATA = os.urandom(2 * 1024 * 1024 + 77)
SHA = hashlib.sha256(DATA).hexdigest()
DEST = "checkpoints/m.safetensors"


@pytest.fixture(autouse=True)
def short_stall(settings, models_dir):
    settings.STALL_TIMEOUT = 0.5


@pytest.fixture
def first():
    with FileServer() as server:
        yield server


@pytest.fixture
def second():
    with FileServer() as server:
        yield server


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the download waited {seconds} s instead of going on")


def fetch(urls: list[str], sha256: str = SHA, sleep=no_sleep):
    download, _ = Download.objects.request(urls[0], DEST, sha256, sources=urls[1:])
    job = run_foreground(download.job_id, sleep=sleep)
    download.refresh_from_db()
    return download, job


def open_breaker(url: str) -> None:
    CircuitBreaker.objects.create(
        key=host_of(url),
        state=BreakerState.OPEN,
        opened_at=timezone.now(),
        cooldown_seconds=600,
        consecutive_failures=5,
    )


def test_a_404_first_source_fails_over_to_the_second_and_the_file_lands_verified(
    first, second, models_dir
):
    gone, notes = first.url("/gone.bin"), []

    def record(sender, job, **kwargs):
        notes.append(job.error_message)

    job_changed.connect(record)
    try:
        download, job = fetch([gone, second.add("/m.bin", DATA)])
    finally:
        job_changed.disconnect(record)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert (models_dir / DEST).read_bytes() == DATA
    assert download.source_index == 1 and download.host == host_of(second.base)
    assert download.sources_failed == {"0": f"Nothing was found at {gone} (HTTP 404)"}
    left = f"Mirror 1 of 2 ({host_of(gone)}) failed for good (Nothing was found at {gone}"
    assert any(note.startswith(left) for note in notes)


def test_a_source_refusing_the_download_401_fails_over_to_the_next(first, second):
    refusing = first.add("/m.bin", DATA, auth="Bearer nobody-has-this")
    download, job = fetch([refusing, second.add("/m.bin", DATA)])
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    assert [r["status"] for r in first.requests] == [401]


def test_a_source_whose_breaker_is_open_is_skipped_to_the_next_without_waiting(first, second):
    resting = first.add("/m.bin", DATA)
    open_breaker(resting)
    download, job = fetch([resting, second.add("/m.bin", DATA)])
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    assert first.requests == [] and job.breaker_key == host_of(second.base)


def test_kept_bytes_are_reused_from_the_next_mirror_when_the_sha256_is_known(first, second):
    half = len(DATA) // 2
    flaky = first.add("/m.bin", DATA, script=[f"drop:{half}", "status:404"])
    download, job = fetch([flaky, second.add("/m.bin", DATA)], sleep=lambda seconds: None)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    asked = second.requests[0]["headers"].get("range", "")
    assert asked.startswith("bytes=") and int(asked[6:].split("-")[0]) >= half
    assert "if-range" not in second.requests[0]["headers"]
    assert second.bytes_sent() <= len(DATA) - half


def test_kept_bytes_of_another_file_are_caught_by_the_hash_and_fetched_again(first, second):
    half = len(DATA) // 2
    wrong = first.add("/m.bin", os.urandom(len(DATA)), script=[f"drop:{half}", "status:404"])
    download, job = fetch([wrong, second.add("/m.bin", DATA)], sleep=lambda seconds: None)
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    ranges = [r["headers"].get("range") for r in second.requests]
    assert ranges == [f"bytes={half}-", None]  # the kept half, then all of it once caught
    assert job.integrity_restarts == 1


def test_without_a_sha256_the_next_mirror_starts_from_byte_zero(first, second):
    half = len(DATA) // 2
    flaky = first.add("/m.bin", DATA, script=[f"drop:{half}", "status:404"])
    download, job = fetch([flaky, second.add("/m.bin", DATA)], sha256="", sleep=lambda s: None)
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    assert second.requests[0]["headers"].get("range") in (None, "bytes=0-")


def test_when_every_source_fails_for_good_the_job_fails_naming_how_many_and_why(first, second):
    refusing = first.add("/m.bin", DATA, auth="Bearer nobody-has-this")
    download, job = fetch([refusing, second.url("/gone.bin"), first.url("/also-gone.bin")])
    assert job.status == Status.FAILED and job.error_category == "not_found"
    assert "None of the 3 sources" in job.error_message
    assert "1. " in job.error_message and "401" in job.error_message
    assert "2. " in job.error_message and "3. " in job.error_message
    assert not download.path.exists()


def test_a_retry_after_every_source_failed_tries_them_again(first, second):
    download, job = fetch([first.url("/m.bin"), second.url("/m.bin")])
    assert job.status == Status.FAILED
    second.add("/m.bin", DATA)
    job.retry_now()
    job = run_foreground(job.pk, sleep=no_sleep)
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA


def test_a_single_source_that_is_gone_fails_as_before(first):
    download, job = fetch([first.url("/gone.bin")])
    assert job.status == Status.FAILED and job.error_category == "not_found"
    assert "None of" not in job.error_message and download.sources_failed == {}


def test_a_second_request_with_another_url_joins_and_adds_it_as_a_source(first, second):
    one, created = Download.objects.request(first.url("/a.bin"), DEST, SHA)
    same, joined = Download.objects.request(
        second.url("/b.bin"), DEST, SHA, sources=[first.url("/a.bin"), second.url("/c.bin")]
    )
    one.refresh_from_db()
    assert created and not joined and same.pk == one.pk
    assert one.sources == [first.url("/a.bin"), second.url("/b.bin"), second.url("/c.bin")]


def test_a_source_joined_while_the_download_runs_is_tried_when_the_others_fail(first, second):
    download, _ = Download.objects.request(first.url("/gone.bin"), DEST, SHA)
    Download.objects.request(first.url("/gone-too.bin"), DEST, SHA)
    Download.objects.request(second.add("/m.bin", DATA), DEST, SHA)
    job = run_foreground(download.job_id, sleep=no_sleep)
    download.refresh_from_db()
    assert job.status == Status.SUCCEEDED and download.source_index == 2


def test_the_card_says_which_mirror_the_download_is_on(first, second):
    urls = [first.url("/a.bin"), second.url("/b.bin"), second.url("/c.bin")]
    download, _ = Download.objects.request(urls[0], DEST, SHA, sources=urls[1:])
    download.use_source(1)
    html = render_to_string("live/download.html", {"job": download.job, "download": download})
    assert f"mirror 2 of 3 ({host_of(second.base)})" in html


def test_the_card_of_a_single_source_download_names_no_mirror(first):
    download, _ = Download.objects.request(first.url("/a.bin"), DEST, SHA)
    html = render_to_string("live/download.html", {"job": download.job, "download": download})
    assert "mirror" not in html


def test_all_sources_resting_leaves_the_job_waiting_on_a_breaker(first, second):
    urls = [first.add("/m.bin", DATA), second.add("/m.bin", DATA)]
    open_breaker(urls[0])
    open_breaker(urls[1])
    waits = []
    _, job = fetch(urls, sleep=lambda seconds: (waits.append(seconds), job_pause()))
    assert job.status == Status.PAUSED and waits
    assert first.requests == [] and second.requests == []


def job_pause() -> None:
    """Stop the foreground run at its first wait: pausing ends run_foreground."""
    Download.objects.get().job.pause()


def test_a_breaker_that_rests_past_its_cooldown_is_probed_before_moving_on(first, second):
    resting = first.add("/m.bin", DATA)
    open_breaker(resting)
    CircuitBreaker.objects.filter(key=host_of(resting)).update(
        opened_at=timezone.now() - timedelta(seconds=601)
    )
    download, job = fetch([resting, second.add("/m.bin", DATA)])
    assert job.status == Status.SUCCEEDED and download.source_index == 0
    assert second.requests == []


def test_the_downloads_page_names_each_cards_mirror_with_no_query_per_card(
    client, django_assert_num_queries
):
    urls = ["http://127.0.0.1:9/a.bin", "http://127.0.0.2:9/b.bin", "http://127.0.0.3:9/c.bin"]
    for n in range(4):
        download, _ = Download.objects.request(urls[0], f"vae/{n}.bin", sources=urls[1:])
        download.use_source(1)
    # The list, the count per status, the open breakers, the totals in flight, the banner.
    with django_assert_num_queries(5):
        html = client.get("/downloads/").content.decode()
    assert html.count("mirror 2 of 3 (127.0.0.2:9)") == 4


def test_the_download_command_takes_mirrors_and_refuses_a_bad_one(first, second):
    out = StringIO()
    args = [first.url("/gone.bin"), "--dest", DEST, "--sha256", SHA, "--json"]
    call_command("download", *args, "--mirror", second.add("/m.bin", DATA), stdout=out)
    assert json.loads(out.getvalue())["status"] == Status.SUCCEEDED
    with pytest.raises(CommandError) as error:
        call_command("download", *args, "--mirror", "ftp://h/x")
    assert error.value.returncode == 2 and "ftp://h/x" in str(error.value)


def test_a_local_missing_file_is_not_taken_for_a_source_that_is_gone(first, second):
    download, _ = Download.objects.request(
        first.add("/m.bin", DATA), DEST, SHA, sources=[second.add("/m.bin", DATA)]
    )
    vanished = FileNotFoundError(2, "No such file or directory", str(download.part_path))
    mirrors.leave_if_gone(download, download.job, vanished)  # returns: the job retries
    download.refresh_from_db()
    assert download.source_index == 0 and download.sources_failed == {}


def test_without_a_sha256_kept_bytes_wait_for_the_breaker_instead_of_another_mirror(first, second):
    urls = [first.add("/m.bin", DATA), second.add("/m.bin", DATA)]
    download, _ = Download.objects.request(urls[0], DEST, "", sources=urls[1:])
    download.part_path.parent.mkdir(parents=True, exist_ok=True)
    download.part_path.write_bytes(DATA[: len(DATA) // 2])
    download.sidecar_path.write_text(json.dumps({"url": urls[0], "validator": '"v1"'}))
    open_breaker(urls[0])
    waits = []
    job = run_foreground(download.job_id, sleep=lambda s: (waits.append(s), job_pause()))
    download.refresh_from_db()
    assert job.status == Status.PAUSED and waits and download.source_index == 0
    assert second.requests == [] and download.part_path.stat().st_size == len(DATA) // 2
