"""Downloads against a misbehaving loopback server: every fault ends verified or explained."""

import errno
import hashlib
import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from comfyhub.library.models import Download
from recovery.engine import execute, run_foreground
from recovery.models import Job, Outcome, Status
from recovery.signals import job_changed
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db(transaction=True)

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def short_stall(settings, models_dir):
    settings.STALL_TIMEOUT = 0.5


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


class Clock:
    """Injected into run_foreground: waiting out a Retry-After takes no real time."""

    def __init__(self):
        self.current = timezone.now()
        self.slept = []

    def now(self):
        return max(self.current, timezone.now())

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current = self.now() + timedelta(seconds=seconds)


def fetch(url: str, dest: str = "checkpoints/m.bin", sha256: str = SHA, size=None):
    download, _ = Download.objects.request(url, dest, sha256, size)
    job = run_foreground(download.job_id, sleep=Clock().sleep)
    download.refresh_from_db()
    return download, job


def categories(job: Job) -> list[str]:
    return list(job.attempts.values_list("category", flat=True))


def leftovers(models_dir) -> list[str]:
    """Files in the models folder but the one-copy store's (tests/test_store.py)."""
    files = (p.relative_to(models_dir) for p in models_dir.rglob("*") if p.is_file())
    return sorted(str(p) for p in files if p.parts[0] != ".store")


def test_a_plain_download_lands_verified_with_nothing_left_beside_it(server, models_dir):
    download, job = fetch(server.add("/m.bin", DATA))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert (models_dir / "checkpoints/m.bin").read_bytes() == DATA
    assert leftovers(models_dir) == ["checkpoints/m.bin"]


def test_dropped_connections_resume_from_the_last_byte(server):
    url = server.add("/m.bin", DATA, script=["drop:1000000", "drop:2000000"])
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    ranges = [r["headers"].get("range") for r in server.requests]
    assert ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert server.bytes_sent() <= len(DATA) + 2 * 1024 * 1024


def test_a_stall_times_out_and_resumes(server):
    url = server.add("/m.bin", DATA, script=["stall:500000"])
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert categories(job) == ["timeout", ""]


def test_a_503_with_retry_after_is_retried_after_that_delay(server):
    url = server.add("/m.bin", DATA, script=["status:503:7"])
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    clock = Clock()
    job = run_foreground(download.job_id, sleep=clock.sleep, clock=clock.now)
    assert job.status == Status.SUCCEEDED and categories(job) == ["server", ""]
    assert clock.slept and clock.slept[0] == pytest.approx(7, abs=1)


def test_a_429_is_rate_limited_and_honours_retry_after(server):
    url = server.add("/m.bin", DATA, script=["status:429:30"])
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    clock = Clock()
    job = run_foreground(download.job_id, sleep=clock.sleep, clock=clock.now)
    assert job.status == Status.SUCCEEDED and categories(job) == ["rate_limited", ""]
    assert clock.slept[0] == pytest.approx(30, abs=1)


def test_a_401_fails_as_auth_and_leaves_nothing(server, models_dir):
    download, job = fetch(server.add("/m.bin", DATA, auth="Bearer right"))
    assert job.status == Status.FAILED and job.error_category == "auth"
    assert "refused the download (HTTP 401)" in job.error_message
    assert not download.path.exists()


def test_a_404_fails_as_not_found_and_leaves_nothing(server, models_dir):
    download, job = fetch(server.add("/m.bin", DATA, script=["status:404"]))
    assert job.status == Status.FAILED and job.error_category == "not_found"
    assert not download.path.exists()


def test_a_server_that_ignores_range_restarts_cleanly_from_zero(server):
    url = server.add("/m.bin", DATA, script=["drop:1000000", "ignore_range"])
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert server.requests[1]["status"] == 200


def test_a_flipped_byte_is_caught_discarded_and_downloaded_again(server):
    url = server.add("/m.bin", DATA, script=["flip:12345"])
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    outcomes = list(job.attempts.values_list("outcome", flat=True))
    assert outcomes == [Outcome.RESTARTED, Outcome.SUCCEEDED]


def test_a_file_that_never_matches_fails_as_integrity_and_leaves_nothing(server, models_dir):
    _download, job = fetch(server.add("/m.bin", DATA, script=["flip:1", "flip:2"]))
    assert job.status == Status.FAILED and job.error_category == "integrity"
    assert leftovers(models_dir) == []


def test_a_changed_file_and_etag_restart_the_download(server):
    url = server.add("/m.bin", DATA, script=["drop:1000000"])
    download, _ = Download.objects.request(url, "checkpoints/m.bin")
    execute(download.job_id)
    new = os.urandom(2 * 1024 * 1024)
    server.replace("/m.bin", new, etag='"v2"')
    job = run_foreground(download.job_id)
    download.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert download.sha256 == hashlib.sha256(new).hexdigest()
    assert download.path.read_bytes() == new


def test_a_redirect_to_another_host_is_followed(server):
    with FileServer() as mirror:
        target = mirror.add("/blob.bin", DATA)
        download, job = fetch(server.add("/m.bin", DATA, script=[f"redirect:{target}"]))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert mirror.requests[0]["path"] == "/blob.bin"


def test_fewer_bytes_than_content_length_is_resumed(server):
    download, job = fetch(server.add("/m.bin", DATA, script=["short:777777"]))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert categories(job) == ["network", ""]


def test_a_complete_part_answered_with_416_is_verified_without_a_body(server, models_dir):
    url = server.add("/m.bin", DATA)
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    download.url = url
    download.save()
    download.path.parent.mkdir()
    download.part_path.write_bytes(DATA)
    download.sidecar_path.write_text(f'{{"url": "{url}", "validator": "\\"v1\\""}}')
    job = run_foreground(download.job_id)
    assert job.status == Status.SUCCEEDED
    assert server.requests[0]["status"] == 416 and server.bytes_sent() == 0


def test_a_416_body_never_reaches_the_part(server, models_dir):
    url = server.add(
        "/m.bin", DATA, body_416=b"<html><body>416 Range Not Satisfiable</body></html>"
    )
    # Neither size nor sha256 known: nothing but the 416 handling keeps the HTML out.
    download, _ = Download.objects.request(url, "checkpoints/m.bin")
    Download.objects.filter(pk=download.pk).update(url=url)
    download.path.parent.mkdir()
    download.part_path.write_bytes(DATA)
    download.sidecar_path.write_text(f'{{"url": "{url}", "validator": "\\"v1\\""}}')
    job = run_foreground(download.job_id)
    assert job.status == Status.SUCCEEDED and server.requests[0]["status"] == 416
    assert download.path.read_bytes() == DATA and job.attempt == 1


def test_a_wrong_size_fails_verification(server, models_dir):
    _download, job = fetch(server.add("/m.bin", DATA), sha256="", size=len(DATA) + 1)
    assert job.status == Status.FAILED and job.error_category == "integrity"
    assert leftovers(models_dir) == []


def test_a_file_already_present_with_the_sha256_finishes_without_network(server, models_dir):
    (models_dir / "checkpoints").mkdir()
    (models_dir / "checkpoints/m.bin").write_bytes(DATA)
    download, job = fetch(server.add("/m.bin", DATA))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert server.requests == []


def test_a_second_request_for_the_same_destination_joins_the_first(server):
    url = server.add("/m.bin", DATA)
    first, created = Download.objects.request(url, "checkpoints/m.bin", SHA)
    second, joined_created = Download.objects.request(url, "checkpoints/m.bin", SHA)
    assert created and not joined_created and first.pk == second.pk


def test_a_finished_destination_can_be_requested_again():
    first, _ = Download.objects.request("http://127.0.0.1:9/a", "loras/a.bin")
    Job.objects.filter(pk=first.job_id).update(status=Status.SUCCEEDED)
    second, created = Download.objects.request("http://127.0.0.1:9/a", "loras/a.bin")
    assert created and second.pk != first.pk


def test_cancel_deletes_the_part_and_pause_keeps_it(server):
    url = server.add("/m.bin", DATA, script=["drop:1000000"])
    paused, _ = Download.objects.request(url, "checkpoints/p.bin", SHA)
    execute(paused.job_id)
    assert paused.part_path.stat().st_size == 1000000
    assert Job.objects.get(pk=paused.job_id).pause() and paused.part_path.exists()
    assert Job.objects.get(pk=paused.job_id).cancel()
    assert not paused.part_path.exists() and not paused.sidecar_path.exists()


def test_resume_after_pause_continues_from_the_part(server):
    url = server.add("/m.bin", DATA, script=["drop:1500000"])
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    execute(download.job_id)
    job = Job.objects.get(pk=download.job_id)
    assert job.pause() and job.resume()
    assert run_foreground(download.job_id).status == Status.SUCCEEDED
    assert server.requests[-1]["headers"]["range"] == "bytes=1500000-"


def full_disk_for(monkeypatch, path) -> None:
    """Writes to `path` fail with ENOSPC, as on a full disk. The one fake OS call in these
    tests: a real full filesystem needs root to mount, and a link to /dev/full is refused."""
    write = os.write

    def refusing(fd: int, data) -> int:
        if path.exists() and os.path.samestat(os.fstat(fd), os.stat(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data)

    monkeypatch.setattr(os, "write", refusing)


def test_a_full_disk_while_writing_pauses_with_what_is_needed_and_where(
    server, models_dir, monkeypatch
):
    download, _ = Download.objects.request(server.add("/m.bin", DATA), "checkpoints/m.bin", SHA)
    full_disk_for(monkeypatch, download.part_path)
    job = run_foreground(download.job_id)
    assert job.status == Status.PAUSED and job.error_category == "disk_full"
    assert "needs 3.1 MB more" in job.error_message and str(models_dir) in job.error_message
    monkeypatch.undo()
    assert job.retry_now() and run_foreground(job.pk).status == Status.SUCCEEDED


def test_too_little_free_space_is_caught_before_the_first_byte(server, settings):
    url = server.add("/m.bin", DATA)
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    statvfs = os.statvfs(settings.MODELS_DIR)
    free = statvfs.f_bavail * statvfs.f_frsize
    Download.objects.filter(pk=download.pk).update(expected_size=free + 10**12)
    job = run_foreground(download.job_id)
    assert job.status == Status.PAUSED and job.error_category == "disk_full"
    assert server.requests == []


def test_a_host_with_no_connection_left_makes_the_next_download_wait_without_an_attempt(
    server, settings
):
    settings.CONNECTIONS_PER_HOST = 1
    url = server.add("/m.bin", DATA)
    busy, _ = Download.objects.request(url, "checkpoints/busy.bin")
    Job.objects.filter(pk=busy.job_id).update(status=Status.RUNNING, lease_owner="w:1")
    waiting, _ = Download.objects.request(url, "checkpoints/m.bin")
    assert execute(waiting.job_id) == Status.WAITING
    job = Job.objects.get(pk=waiting.job_id)
    assert "free download slot" in job.error_message and job.attempt == 0


def test_progress_is_written_at_most_twice_a_second_with_speed_and_eta(server):
    url = server.add("/m.bin", DATA, rate=2 * 1024 * 1024)
    seen = []

    def record(sender, job, **kwargs):
        if job.status == Status.RUNNING and job.progress_done:
            seen.append(Download.objects.filter(job=job).values("speed", "eta_seconds").get())

    job_changed.connect(record)
    started = time.monotonic()
    try:
        _, job = fetch(url)
    finally:
        job_changed.disconnect(record)
    assert job.status == Status.SUCCEEDED
    assert 1 <= len(seen) <= (time.monotonic() - started) / 0.5 + 2
    assert any(row["speed"] > 0 and row["eta_seconds"] is not None for row in seen)


def test_many_quick_drops_in_a_row_still_finish_and_keep_the_host_open(server, settings):
    settings.RECOVERY_BREAKER_THRESHOLD = 3
    step = len(DATA) // 12
    url = server.add("/m.bin", DATA, script=[f"drop:{step}"] * 10)
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert job.attempt == 11 and server.bytes_sent() <= len(DATA) + 11 * 65536
