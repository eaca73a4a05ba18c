"""`serve` as a real process tree: web + worker, live fragments, clean shutdown."""

import asyncio
import json
import os
import re
import signal

import httpx
import pytest
import websockets

from recovery.models import TERMINAL
from tests.conftest import (
    REDIS_URL,
    page_socket,
    post_form,
    processes_with_env,
    redis_reachable,
    watched_jobs,
)
from tests.fileserver import FileServer

pytestmark = pytest.mark.e2e

LAYERS = [
    pytest.param({}, "InMemoryChannelLayer", id="embedded"),
    pytest.param({"COMFYHUB_REDIS_URL": REDIS_URL}, "RedisChannelLayer", id="redis"),
]


def queue_self_test(base: str) -> int:
    response = post_form(base, "/system/", {})
    return int(re.search(r"job=(\d+)", response.headers["location"]).group(1))


async def watch(base: str, page: str, pk: int) -> list[str]:
    """The statuses the page's socket sends for job `pk`'s card, up to a terminal one."""
    statuses = []
    url = base.replace("http://", "ws://") + page_socket(page)
    async with websockets.connect(url, origin=base, open_timeout=10) as ws:
        async for message in ws:
            card = re.search(rf'id="job-{pk}".*?data-status="(\w+)"', message, re.S)
            if card:
                statuses.append(card.group(1))
            if statuses and statuses[-1] in TERMINAL:
                return statuses


@pytest.mark.parametrize(("extra_env", "layer"), LAYERS)
def test_a_browser_socket_sees_the_self_test_go_from_queued_to_succeeded(
    serve_factory, extra_env, layer
):
    if extra_env and not redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_URL} (apt-get install redis-server)")
    server = serve_factory(**extra_env)
    assert httpx.get(server.base + "/healthz").json()["channel_layer"] == layer
    pk = queue_self_test(server.base)
    page = httpx.get(f"{server.base}/system/?job={pk}").text
    statuses = asyncio.run(asyncio.wait_for(watch(server.base, page, pk), 60))
    assert statuses[-1] == "succeeded" and "running" in statuses


def test_sigterm_stops_web_and_worker_leaving_no_process_behind(serve_factory):
    server = serve_factory()
    assert len(processes_with_env(server.marker)) >= 3  # serve, daphne, cluster
    assert server.stop() == 0
    assert processes_with_env(server.marker) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base + "/healthz")


def test_when_the_worker_dies_serve_stops_the_web_server_too(serve_factory):
    server = serve_factory()
    worker = next(p for p in processes_with_env(server.marker) if is_worker_leader(p))
    os.kill(worker, signal.SIGKILL)
    assert server.proc.wait(timeout=30) == 1
    assert processes_with_env(server.marker) == []


def is_worker_leader(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        args = fh.read().split(b"\0")
    with open(f"/proc/{pid}/stat") as fh:
        pgid = int(fh.read().rsplit(")", 1)[1].split()[2])
    return b"worker" in args and pgid == pid


def test_a_download_posted_on_the_page_is_fetched_by_the_worker_through_a_drop(
    serve_factory, tmp_path
):
    data = os.urandom(3 * 1024 * 1024)
    with FileServer() as files:
        url = files.add("/m.safetensors", data, script=["drop:1000000"])
        server = serve_factory(COMFYHUB_MODELS_DIR=str(tmp_path / "models"))
        post_form(server.base, "/downloads/", {"url": url, "dest": "vae/m.safetensors"})
        page = httpx.get(server.base + "/downloads/").text
        (pk,) = watched_jobs(page)
        statuses = asyncio.run(asyncio.wait_for(watch(server.base, page, pk), 60))
    assert statuses[-1] == "succeeded"
    assert (tmp_path / "models/vae/m.safetensors").read_bytes() == data
    assert files.requests[-1]["headers"]["range"] == "bytes=1000000-"


def test_serve_json_announces_its_start_as_one_json_line(serve_factory):
    server = serve_factory("--json")
    first = server.log.read_text().splitlines()
    announced = [json.loads(line) for line in first if line.startswith("{")]
    assert announced == [{"status": "running", "url": server.base + "/", "pid": server.proc.pid}]
    assert server.stop() == 0
