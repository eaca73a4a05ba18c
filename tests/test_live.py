"""The page socket, driven in-process through the real ASGI application: one WebSocket
carries every live card of a page and sends only what changed."""

import re
from datetime import timedelta

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from comfyhub.asgi import application
from comfyhub.live.page import page_url
from recovery.models import Category, Job, Status

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    # sync_to_async runs ORM calls on a helper thread whose connection would otherwise
    # outlive the test and block dropping the PostgreSQL test database.
    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def in_memory(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.LIVE_POLL_SECONDS = 0.05


ORIGIN = [(b"origin", b"http://127.0.0.1:4000")]


def cards(message: str) -> dict[int, str]:
    """{job pk: status} of every job card in one message."""
    found = re.findall(r'<article id="job-(\d+)"[^>]*>.*?data-status="(\w+)"', message, re.S)
    return {int(pk): status for pk, status in found}


async def connect(url: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, url, headers=ORIGIN)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def create_jobs(n: int, **fields) -> list[Job]:
    """Jobs last written a minute ago: a page rendered now shows them as they are."""
    fields = {"kind": "selftest", "updated_at": timezone.now() - timedelta(minutes=1), **fields}
    return [await sync_to_async(Job.objects.create)(**fields) for _ in range(n)]


async def touch(*jobs: Job, **fields) -> None:
    """Write the rows as another process would: no hint reaches this one."""
    pks = [job.pk for job in jobs]
    await sync_to_async(Job.objects.filter(pk__in=pks).update)(updated_at=timezone.now(), **fields)


def rendered_before(jobs: list[Job]) -> str:
    """The URL of a page rendered before the jobs were written (it shows none of it)."""
    url = page_url([job.pk for job in jobs], panels=[])
    earlier = timezone.now() - timedelta(minutes=5)
    return re.sub(r"since=[\d.]+", f"since={earlier.timestamp():.6f}", url)


async def test_one_socket_sends_the_cards_of_several_jobs_in_one_message():
    jobs = await create_jobs(3)
    ws = await connect(rendered_before(jobs))
    message = await ws.receive_from(timeout=5)
    assert cards(message) == dict.fromkeys([job.pk for job in jobs], "queued")
    assert message.count('hx-swap-oob="true"') == 3
    await ws.disconnect()


async def test_on_connect_it_sends_only_what_changed_since_the_page_was_rendered():
    jobs = await create_jobs(3)
    ws = await connect(page_url([job.pk for job in jobs], panels=[]))
    assert await ws.receive_nothing(timeout=0.3)
    await touch(jobs[1], status=Status.RUNNING)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[1].pk: "running"}
    await ws.disconnect()


async def test_a_job_changed_elsewhere_is_re_sent_and_the_unchanged_ones_are_not():
    jobs = await create_jobs(3)
    ws = await connect(rendered_before(jobs))
    await ws.receive_from(timeout=5)
    await touch(jobs[2], status=Status.RUNNING, progress_done=1, progress_total=4)
    message = await ws.receive_from(timeout=5)
    assert cards(message) == {jobs[2].pk: "running"} and "1 / 4" in message
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_hint_wakes_the_socket_without_waiting_for_the_poll(settings):
    settings.LIVE_POLL_SECONDS = 3600  # only the hint can wake it
    jobs = await create_jobs(2)
    ws = await connect(page_url([job.pk for job in jobs], panels=[]))
    await sync_to_async(jobs[0].write)(status=Status.RUNNING)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[0].pk: "running"}
    await ws.disconnect()


async def test_a_finished_job_is_sent_once_then_no_longer_watched():
    jobs = await create_jobs(2)
    ws = await connect(page_url([job.pk for job in jobs], panels=[]))
    await touch(jobs[0], status=Status.SUCCEEDED)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[0].pk: "succeeded"}
    await touch(jobs[0], error_message="written after the end")
    await touch(jobs[1], status=Status.RUNNING)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[1].pk: "running"}
    await ws.disconnect()


async def test_with_every_card_finished_the_socket_stays_open_for_the_banner():
    jobs = await create_jobs(1)
    ws = await connect(page_url([jobs[0].pk]))
    assert 'id="attention-banner"' in await ws.receive_from(timeout=5)
    await touch(jobs[0], status=Status.SUCCEEDED)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[0].pk: "succeeded"}
    await create_jobs(1, status=Status.FAILED, error_category=Category.AUTH)
    banner = await ws.receive_from(timeout=5)
    assert "1 job needs you" in banner and "1 needs an access token" in banner
    assert 'id="attention-banner" hx-swap-oob="true"' in banner
    await ws.disconnect()


async def test_the_card_of_a_job_that_was_deleted_is_simply_dropped():
    jobs = await create_jobs(2)
    ws = await connect(page_url([job.pk for job in jobs], panels=[]))
    await sync_to_async(Job.objects.filter(pk=jobs[0].pk).delete)()
    await touch(jobs[1], status=Status.RUNNING)
    assert cards(await ws.receive_from(timeout=5)) == {jobs[1].pk: "running"}
    await ws.disconnect()


@pytest.mark.parametrize(
    "query",
    [
        "jobs=1,x",
        "since=soon",
        "panels=weather",
        "rockets=1",
        "jobs=" + ",".join(["1"] * 2001),
        "jobs=99999999999999999999",
        f"jobs={2**63}",
        "jobs=0",
        "jobs=-3",
        "projects=99999999999999999999",
    ],
)
async def test_a_malformed_page_url_is_refused_with_4400(query):
    ws = WebsocketCommunicator(application, f"/ws/page/?{query}", headers=ORIGIN)
    connected, code = await ws.connect()
    assert not connected and code == 4400


async def test_with_login_required_an_anonymous_socket_is_refused(settings):
    settings.LOGIN_REQUIRED = True
    ws = WebsocketCommunicator(application, page_url(), headers=ORIGIN)
    connected, _ = await ws.connect()
    assert not connected


async def test_a_socket_from_a_foreign_origin_is_refused():
    origin = [(b"origin", b"http://evil.example")]
    connected, _ = await WebsocketCommunicator(application, page_url(), headers=origin).connect()
    assert not connected
