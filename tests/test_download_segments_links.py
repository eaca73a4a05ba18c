"""Split downloads and their links: expired signed addresses, tokens across redirects, and
sidecars that name bytes the .part no longer holds."""

import json
import os
import threading

import httpx
import pytest

from comfyhub.library import fetch as engine
from comfyhub.library import segments
from comfyhub.library.models import Download
from recovery.engine import run_foreground
from recovery.models import Job, Status
from tests import test_download_segments as split
from tests.test_download_segments import DATA, MIB, SHA, fetch
from tests.test_downloads import Clock

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("models_dir")]

TOKEN = "hf_secret_for_tests_0123456789"
quick, server = split.quick, split.server  # the same fixtures (quick is autouse)


@pytest.mark.parametrize("refusal", [403, 410])
def test_a_signed_link_that_expires_mid_split_is_resolved_again_and_the_download_succeeds(
    server, refusal
):
    # The CDN address answers the first request, then refuses every later one: the link
    # expired. The download's own address, asked again, now serves the file itself.
    cdn = server.add("/cdn.bin", DATA, rate=16 * MIB, script=["ok"] + [f"status:{refusal}"] * 40)
    download, job = fetch(server.add("/m.bin", DATA, script=[f"redirect:{cdn}"]))
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA and job.attempt == 1
    assert download.path.read_bytes() == DATA
    paths = [r["path"] for r in server.requests]
    assert paths.count("/cdn.bin") >= 2 and paths.count("/m.bin") >= 2


def test_a_refusal_from_the_download_s_own_address_still_fails_as_auth(server):
    cdn = server.add("/cdn.bin", DATA, rate=16 * MIB, script=["ok"] + ["status:403"] * 40)
    url = server.add("/m.bin", DATA, script=[f"redirect:{cdn}"] + ["status:403"] * 40)
    _, job = fetch(url)
    assert job.status == Status.FAILED and job.error_category == "auth"


@pytest.mark.parametrize("target", ["http://hf.test/lfs/x.bin", "https://hf.test:8443/lfs/x.bin"])
def test_a_segment_redirected_to_its_own_host_on_another_scheme_or_port_gets_no_token(
    settings, target
):
    settings.HF_ENDPOINT, settings.HF_TOKEN = "https://hf.test", TOKEN
    home = "https://hf.test/org/m/resolve/main/x.bin"
    download, _ = Download.objects.request(home, "checkpoints/x.bin")
    download.url = home
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if str(request.url) == home:
            return httpx.Response(302, headers={"Location": target})
        return httpx.Response(206, headers={"Content-Range": f"bytes 0-9/{len(DATA)}"})

    transfer = engine.Transfer(download, Job.objects.get(pk=download.job_id))
    transfer.total, transfer.segments = len(DATA), segments.plan(0, len(DATA), 2)
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        split = segments.Split(client, transfer, home, 2)
        split.open_segment(transfer.segments[0]).close()
    assert seen == [(home, f"Bearer {TOKEN}"), (target, None)]


def plant(download: Download, part: bytes, rows: list, sha256: str = "") -> None:
    download.part_path.parent.mkdir(parents=True, exist_ok=True)
    download.part_path.write_bytes(part)
    state = {"url": download.url, "validator": '"v1"', "expected_sha256": sha256}
    state.update(total=len(DATA), segments=rows)
    download.sidecar_path.write_text(json.dumps(state))


@pytest.mark.parametrize("sha256", [SHA, ""])
def test_a_part_shorter_than_its_sidecar_claims_is_fetched_again_not_filled_with_zeros(
    server, sha256
):
    # A kill between truncating the .part and rewriting its sidecar: 2 MiB on disk, a
    # sidecar that says 12 MiB arrived.
    url = server.add("/m.bin", DATA)
    download, _ = Download.objects.request(url, "checkpoints/m.bin", sha256)
    Download.objects.filter(pk=download.pk).update(url=url)
    download.refresh_from_db()
    half = len(DATA) // 2
    plant(download, DATA[: 2 * MIB], [[0, half, half], [half, len(DATA), 4 * MIB]], sha256)
    job = run_foreground(download.job_id, sleep=Clock().sleep)
    download.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.attempt == 1
    assert download.path.read_bytes() == DATA and download.sha256 == SHA


def test_a_sidecar_naming_bytes_beyond_the_part_is_not_trusted():
    rows = [[0, 5, 5], [5, 10, 3]]
    assert segments.from_sidecar({"total": 10, "segments": rows}, 7) is None
    assert segments.from_sidecar({"total": 10, "segments": rows}, 8)


def test_a_worker_that_fails_to_start_leaves_no_other_worker_writing_after_the_part_closes(
    server, monkeypatch
):
    start, close = threading.Thread.start, os.close
    started, alive_at_close = [], []

    def start_or_fail(thread):
        target = getattr(thread, "_target", None)
        if getattr(target, "__func__", None) is segments.Split.work:
            if len(started) == 2 and not alive_at_close:
                raise RuntimeError("can't start new thread")
            started.append(thread)
        start(thread)

    def watching_close(fd):
        if started and not alive_at_close and fd > 2:
            alive_at_close.append(any(thread.is_alive() for thread in started))
        close(fd)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    monkeypatch.setattr(os, "close", watching_close)
    download, job = fetch(server.add("/m.bin", DATA, rate=16 * MIB))
    monkeypatch.undo()
    assert alive_at_close == [False]
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
