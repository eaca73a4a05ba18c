"""The live-update consumer, driven in-process through the real ASGI application."""

import re

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from comfyhub.asgi import application
from comfyhub.live.broadcast import changed
from recovery.models import Job, Status

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    # sync_to_async runs ORM calls on a helper thread whose connection would otherwise
    # outlive the test and block dropping the PostgreSQL test database.
    await sync_to_async(connections.close_all)()


IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def status_of(fragment: str) -> str:
    return re.search(r'data-status="(\w+)"', fragment).group(1)


def communicator(pk: int) -> WebsocketCommunicator:
    origin = [(b"origin", b"http://127.0.0.1:4000")]
    return WebsocketCommunicator(application, f"/ws/jobs/{pk}/", headers=origin)


async def connect(pk: int) -> WebsocketCommunicator:
    ws = communicator(pk)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def create_job(**fields) -> Job:
    return await sync_to_async(Job.objects.create)(kind="selftest", **fields)


async def write(job: Job, **fields) -> None:
    await sync_to_async(job.write)(**fields)


async def test_it_sends_the_current_state_on_connect_as_an_oob_fragment(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    job = await create_job()
    ws = await connect(job.pk)
    fragment = await ws.receive_from(timeout=5)
    assert f'id="job-{job.pk}"' in fragment and 'hx-swap-oob="true"' in fragment
    assert status_of(fragment) == "queued"
    await ws.disconnect()


async def test_a_hint_re_renders_the_fragment_from_the_database(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.LIVE_POLL_SECONDS = 3600  # only the hint can wake it
    job = await create_job()
    ws = await connect(job.pk)
    await ws.receive_from(timeout=5)
    await write(job, status=Status.RUNNING, progress_done=1, progress_total=4)
    fragment = await ws.receive_from(timeout=5)
    assert status_of(fragment) == "running" and "1 / 4" in fragment
    await ws.disconnect()


async def test_without_a_hint_the_poll_notices_a_change_made_elsewhere(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.LIVE_POLL_SECONDS = 0.05
    job = await create_job()
    ws = await connect(job.pk)
    await ws.receive_from(timeout=5)
    # A queryset update sends no hint, as a write from another process would not reach us.
    await sync_to_async(Job.objects.filter(pk=job.pk).update)(
        status=Status.RUNNING, updated_at=timezone.now()
    )
    assert status_of(await ws.receive_from(timeout=5)) == "running"
    await ws.disconnect()


async def test_it_closes_with_1000_once_the_job_is_finished(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    job = await create_job(status=Status.SUCCEEDED)
    ws = await connect(job.pk)
    assert status_of(await ws.receive_from(timeout=5)) == "succeeded"
    assert (await ws.receive_output(timeout=5))["code"] == 1000


async def test_an_unchanged_row_sends_nothing_new(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    job = await create_job()
    ws = await connect(job.pk)
    await ws.receive_from(timeout=5)
    changed("job", job.pk)
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_an_unknown_job_closes_the_socket_with_4404(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    ws = communicator(999999)
    await ws.connect()
    assert (await ws.receive_output(timeout=5))["code"] == 4404


async def test_with_login_required_an_anonymous_socket_is_refused(settings):
    settings.LOGIN_REQUIRED = True
    job = await create_job()
    connected, _ = await communicator(job.pk).connect()
    assert not connected


async def test_a_socket_from_a_foreign_origin_is_refused(settings):
    job = await create_job()
    ws = WebsocketCommunicator(
        application, f"/ws/jobs/{job.pk}/", headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await ws.connect()
    assert not connected
