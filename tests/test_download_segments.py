"""Segmented downloads: several connections into one .part, each segment resumable."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from itertools import pairwise

import pytest
from django.core.management import CommandError, call_command

from comfyhub.library import segments
from comfyhub.library.bandwidth import LIMITER
from comfyhub.library.models import Download
from recovery.engine import run_foreground
from recovery.models import Job, Status
from recovery.signals import job_changed
from tests.conftest import ROOT, subprocess_env, wait_until
from tests.fakeapis import FakeHuggingFace
from tests.fileserver import FileServer
from tests.test_downloads import Clock

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("models_dir")]

MIB = 1 << 20
DATA = os.urandom(16 * MIB)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def quick(settings, monkeypatch):
    settings.STALL_TIMEOUT = 2.0
    settings.DOWNLOAD_CONNECTIONS = 4
    monkeypatch.setattr(segments, "SEGMENT_BACKOFF", 0.01)
    yield
    LIMITER.read_at, LIMITER.rate = None, None  # the next test reads its own limit


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def fetch(url: str, dest: str = "checkpoints/m.bin", sha256: str = SHA):
    download, _ = Download.objects.request(url, dest, sha256)
    job = run_foreground(download.job_id, sleep=Clock().sleep)
    download.refresh_from_db()
    return download, job


def timed_fetch(url: str, dest: str, data: bytes = DATA) -> float:
    started = time.monotonic()
    download, job = fetch(url, dest, sha256=hashlib.sha256(data).hexdigest())
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == data
    return time.monotonic() - started


def ranges(server) -> list[str | None]:
    return [r["headers"].get("range") for r in server.requests]


def test_four_connections_are_in_flight_at_once_and_beat_one_by_twice(server, settings):
    url = server.add("/m.bin", DATA, rate=8 * MIB)
    split = timed_fetch(url, "checkpoints/split.bin")
    assert server.most_sending == 4 and len(server.requests) == 4
    settings.DOWNLOAD_CONNECTIONS = 1
    server.most_sending = 0
    # Other bytes: the same sha256 again would come from the one-copy store, no network.
    other = os.urandom(len(DATA))
    single = timed_fetch(server.add("/o.bin", other, rate=8 * MIB), "checkpoints/o.bin", other)
    assert server.most_sending == 1
    assert single / split >= 2, (single, split)


def test_the_file_is_hashed_as_its_prefix_grows_and_lands_verified(server, models_dir):
    download, job = fetch(server.add("/m.bin", DATA, rate=16 * MIB))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert (models_dir / "checkpoints/m.bin").read_bytes() == DATA
    assert sorted(p.name for p in (models_dir / "checkpoints").iterdir()) == ["m.bin"]
    assert download.connections == 4


def test_a_small_file_uses_one_connection(server):
    small = DATA[: 7 * MIB]
    fetch(server.add("/m.bin", small), sha256=hashlib.sha256(small).hexdigest())
    assert len(server.requests) == 1 and server.most_sending == 1


def test_a_file_split_in_segments_of_at_least_four_mib():
    planned = segments.plan(3 * MIB, 3 * MIB + 10 * MIB, 8)
    assert [(s.start, s.end) for s in planned] == [
        (0, 3 * MIB),
        (3 * MIB, 8 * MIB),
        (8 * MIB, 13 * MIB),
    ]
    assert planned[0].finished and not planned[1].finished


def test_one_connection_asks_once_without_a_range(server):
    out = StringIO()
    url = server.add("/m.bin", DATA)
    call_command("download", url, "--dest", "vae/m.bin", "--connections", "1", "--json", stdout=out)
    assert json.loads(out.getvalue())["sha256"] == SHA
    assert ranges(server) == [None]


def test_a_bad_connections_count_is_refused_as_bad_input():
    with pytest.raises(CommandError, match="--connections must be from 1 to 64") as error:
        call_command("download", "http://h/x", "--dest", "vae/x.bin", "--connections", "0")
    assert error.value.returncode == 2


def test_a_server_without_range_falls_back_to_one_stream(server):
    download, job = fetch(server.add("/m.bin", DATA, ranges=False))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert [r["status"] for r in server.requests] == [200]
    assert server.bytes_sent() == len(DATA)


def test_a_segment_answered_with_200_keeps_the_prefix_and_goes_on_as_one_stream(server):
    url = server.add("/m.bin", DATA, rate=4 * MIB, script=["ok", "ignore_range"])
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert [r["status"] for r in server.requests[:2]] == [206, 200]
    last = server.requests[-1]["headers"].get("range")
    assert last is None or last.endswith("-")  # one stream to the end, from the prefix kept
    assert server.bytes_sent() <= 2 * len(DATA)


def test_a_server_that_keeps_dropping_one_segment_still_finishes_verified(server, settings):
    settings.DOWNLOAD_CONNECTIONS = 2
    # The first GET is segment 0's; every later one is segment 1 asking again.
    script = ["ok", *["drop:0"] * 5, *["drop:300000"] * 3]
    download, job = fetch(server.add("/m.bin", DATA, rate=8 * MIB, script=script))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert server.bytes_sent() <= len(DATA) + 2 * MIB


def left_split(url: str, sha256: str = SHA, held: int = 8 * MIB, cuts=()) -> Download:
    """A .part an earlier process left (ETag "v1"): [0, held) whole, the rest not begun,
    cut at `cuts`."""
    download, _ = Download.objects.request(url, "checkpoints/m.bin", sha256)
    download.part_path.parent.mkdir(parents=True, exist_ok=True)
    download.part_path.write_bytes(DATA[:held] + bytes(len(DATA) - held))
    edges = [held, *cuts, len(DATA)]
    rows = [[0, held, held]] + [[a, b, 0] for a, b in pairwise(edges)]
    state = {"url": url, "validator": '"v1"', "total": len(DATA), "segments": rows}
    download.sidecar_path.write_text(json.dumps(state))
    return download


def test_a_split_part_resumes_only_its_unfinished_segment(server):
    download = left_split(server.add("/m.bin", DATA))
    job = run_foreground(download.job_id)
    assert job.status == Status.SUCCEEDED and Download.objects.get(pk=download.pk).sha256 == SHA
    assert server.bytes_sent() == 8 * MIB
    assert all(r["headers"]["if-range"] == '"v1"' for r in server.requests)


def test_segments_left_are_cut_for_every_connection_before_asking(server, settings):
    settings.DOWNLOAD_CONNECTIONS = 2
    download = left_split(server.add("/m.bin", DATA, rate=4 * MIB))
    assert run_foreground(download.job_id).status == Status.SUCCEEDED
    assert sorted(ranges(server)) == ["bytes=12582912-16777215", "bytes=8388608-12582911"]
    assert server.bytes_sent() == 8 * MIB


def test_an_idle_connection_takes_over_half_of_what_another_has_left(server, settings):
    settings.DOWNLOAD_CONNECTIONS = 2
    download = left_split(server.add("/m.bin", DATA, rate=4 * MIB), held=4 * MIB, cuts=[5 * MIB])
    assert run_foreground(download.job_id).status == Status.SUCCEEDED
    starts = sorted(int(r.partition("=")[2].partition("-")[0]) for r in ranges(server))
    assert len(starts) == 3 and starts[:2] == [4 * MIB, 5 * MIB] and starts[2] > 8 * MIB
    assert server.bytes_sent() <= 12 * MIB + MIB


def test_a_segment_answered_for_a_changed_file_restarts_it_cleanly(server, models_dir):
    new = os.urandom(len(DATA))
    url = server.add("/m.bin", new, etag='"v2"')
    download = left_split(url, hashlib.sha256(new).hexdigest())
    job = run_foreground(download.job_id)
    assert job.status == Status.SUCCEEDED
    assert server.requests[0]["status"] == 200  # If-Range "v1" no longer matched
    assert (models_dir / "checkpoints/m.bin").read_bytes() == new


def test_a_stalled_segment_times_out_and_asks_again_by_itself(server, settings):
    settings.STALL_TIMEOUT = 0.5
    download, job = fetch(server.add("/m.bin", DATA, script=["ok", "stall:100000"]))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA and job.attempt == 1
    assert len(server.requests) == 5


def test_segments_use_the_redirect_target_and_the_token_stays_home(settings, server):
    with FakeHuggingFace(token="hf_secret_for_tests_0123456789") as hf:
        settings.HF_ENDPOINT, settings.HF_TOKEN = hf.base, "hf_secret_for_tests_0123456789"
        cdn = server.add("/lfs/unet.bin", DATA)
        hf.add_file("org/model", "unet.safetensors", DATA, script=[f"redirect:{cdn}"])
        download, job = fetch(f"{hf.base}/org/model/resolve/main/unet.safetensors")
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert len(hf.requests) == 1 and hf.requests[0]["headers"]["authorization"]
    assert len(server.requests) == 4
    assert not any("authorization" in r["headers"] for r in server.requests)


def test_a_segment_refused_with_403_fails_the_download_as_auth(server):
    _, job = fetch(server.add("/m.bin", DATA, script=["ok", "status:403"]))
    assert job.status == Status.FAILED and job.error_category == "auth"
    assert "refused the download (HTTP 403)" in job.error_message


def test_a_segment_answered_with_503_is_retried_from_the_sidecar(server):
    download, job = fetch(server.add("/m.bin", DATA, rate=16 * MIB, script=["ok", "status:503"]))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert job.attempt == 2 and server.bytes_sent() <= len(DATA) + 4 * 2 * MIB


@pytest.mark.parametrize(
    "rows",
    [
        [[0, 5, 5], [6, 10, 0]],  # a gap
        [[0, 5, 6], [5, 10, 0]],  # more done than the segment holds
        [[0, 5, 5]],  # short of the total
        [[0, 5, 5], [5, 10, "0"]],
    ],
)
def test_a_sidecar_whose_segments_do_not_tile_the_file_is_not_trusted(rows):
    assert segments.from_sidecar({"total": 10, "segments": rows}, 10) is None
    assert segments.from_sidecar({"total": 10, "segments": [[0, 5, 5], [5, 10, 1]]}, 10)


def test_a_running_split_download_says_how_many_connections_it_uses(client):
    download, _ = Download.objects.request("http://h/m.bin", "checkpoints/m.bin")
    Job.objects.filter(pk=download.job_id).update(status=Status.RUNNING)
    Download.objects.filter(pk=download.pk).update(connections=4)
    assert "4 connections" in client.get("/downloads/").content.decode()


def test_a_host_short_of_connections_gives_the_next_download_only_what_is_left(server, settings):
    settings.CONNECTIONS_PER_HOST = 6
    url = server.add("/m.bin", DATA, rate=16 * MIB)
    busy, _ = Download.objects.request(url, "checkpoints/busy.bin")
    Job.objects.filter(pk=busy.job_id).update(status=Status.RUNNING, lease_owner="w:1")
    Download.objects.filter(pk=busy.pk).update(connections=4)
    download, job = fetch(url)
    assert job.status == Status.SUCCEEDED and download.connections == 2
    assert server.most_sending == 2


def test_a_paused_split_download_keeps_its_segments_and_resumes_them(server):
    url = server.add("/m.bin", DATA, rate=8 * MIB)
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)

    def pause(sender, job, **kwargs):
        if job.pk == download.job_id and job.progress_done:
            Job.objects.get(pk=job.pk).pause()

    job_changed.connect(pause)
    try:
        assert run_foreground(download.job_id).status == Status.PAUSED
    finally:
        job_changed.disconnect(pause)
    kept = recorded(download.sidecar_path)
    assert kept > 0 and download.part_path.exists()
    assert Job.objects.get(pk=download.job_id).resume()
    assert run_foreground(download.job_id).status == Status.SUCCEEDED
    assert server.bytes_sent() <= len(DATA) + 4 * 2 * MIB


def test_a_full_disk_under_a_split_download_pauses_it_with_the_space_needed(server, monkeypatch):
    download, _ = Download.objects.request(server.add("/m.bin", DATA), "checkpoints/m.bin", SHA)
    pwrite = os.pwrite

    def refusing(fd, data, offset):
        if os.path.samestat(os.fstat(fd), os.stat(download.part_path)) and offset > 8 * MIB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    job = run_foreground(download.job_id)
    assert job.status == Status.PAUSED and job.error_category == "disk_full"
    assert "Not enough disk space" in job.error_message
    monkeypatch.undo()
    assert job.retry_now() and run_foreground(job.pk).status == Status.SUCCEEDED


@pytest.mark.e2e
def test_a_killed_split_download_refetches_at_most_a_chunk_per_segment(
    file_server, tmp_path, models_dir
):
    size = 32 * MIB
    data = os.urandom(size)
    url = file_server.add("/big.bin", data, rate=2 * MIB)
    env = subprocess_env(tmp_path, COMFYHUB_MODELS_DIR=str(models_dir))
    sha = hashlib.sha256(data).hexdigest()
    command = [sys.executable, str(ROOT / "manage.py"), "download", url, "--dest"]
    command += ["checkpoints/big.bin", "--sha256", sha, "--connections", "4", "--json"]
    sidecar = models_dir / "checkpoints/big.bin.part.json"
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    wait_until(lambda: recorded(sidecar) >= 8 * MIB, what="8 MiB recorded in the sidecar")
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = recorded(sidecar)
    assert 0 < kept < size, kept  # the kill landed mid-download, not after the end
    assert not (models_dir / "checkpoints/big.bin").exists()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["sha256"] == sha
    refetched = file_server.bytes_sent() - size
    assert refetched <= 4 * MIB + MIB, (refetched, kept)  # a chunk per segment, and slack


def recorded(sidecar) -> int:
    try:
        rows = json.loads(sidecar.read_text()).get("segments") or []
    except (OSError, ValueError):
        return 0
    return sum(done for _, _, done in rows)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_first_connection_opens_the_others_after_one_window():
    clock = FakeClock()
    ramp = segments.Ramp(0, waiting=True, clock=clock)
    assert ramp.wait() == segments.RAMP_SECONDS
    clock.now += segments.RAMP_SECONDS / 2
    assert ramp.more_wanted(1 * MIB) is None  # the window is not over yet
    clock.now += segments.RAMP_SECONDS / 2
    assert ramp.more_wanted(4 * MIB) is True  # 16 MiB/s: a capped CDN connection
    assert ramp.more_wanted(400 * MIB) is None and ramp.wait() == segments.fetch.REPORT_SECONDS


def test_a_fast_first_connection_stays_alone_until_it_slows():
    clock = FakeClock()
    ramp = segments.Ramp(0, waiting=True, clock=clock)
    clock.now += segments.RAMP_SECONDS
    fast = int(segments.FAST_CONNECTION * segments.RAMP_SECONDS)
    assert ramp.more_wanted(fast) is False  # as fast as the disk: one is enough
    clock.now += segments.RAMP_SECONDS
    assert ramp.more_wanted(fast + fast // 10) is True  # it slowed to a tenth


def test_a_split_of_one_connection_never_waits_for_a_ramp():
    ramp = segments.Ramp(0, waiting=False, clock=FakeClock())
    assert ramp.more_wanted(0) is None and ramp.wait() == segments.fetch.REPORT_SECONDS
