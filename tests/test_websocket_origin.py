"""A WebSocket opens only from a page of the host it was served from (hostile-input #6).

Driven through the real ASGI application, with the headers a browser sends: the
handshake's own Host, and the Origin of the page that opened the socket.
"""

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from comfyhub.asgi import application
from recovery.models import Job

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

LAN = "192.168.1.20:4000"


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def loopback(settings):
    settings.HOST, settings.PORT, settings.LOGIN_REQUIRED = "127.0.0.1", 4000, False
    settings.ALLOWED_HOSTS = ["127.0.0.1", "[::1]", "localhost"]


@pytest.fixture
def everywhere(settings):
    """COMFYHUB_HOST=0.0.0.0: any Host header is fine, and every socket needs a login."""
    settings.HOST, settings.PORT, settings.LOGIN_REQUIRED = "0.0.0.0", 4000, True
    settings.ALLOWED_HOSTS = ["*"]


def logged_in_cookie() -> bytes:
    client = Client()
    client.force_login(User.objects.create_user("ada"))
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def opens(host: str | None, origin: str | None, cookie: bytes = b"") -> bool:
    job = await sync_to_async(Job.objects.create)(kind="selftest")
    headers = [(b"host", host.encode())] if host else []
    headers += [(b"origin", origin.encode())] if origin else []
    headers += [(b"cookie", cookie)] if cookie else []
    ws = WebsocketCommunicator(application, f"/ws/page/?jobs={job.pk}", headers=headers)
    connected, _ = await ws.connect(timeout=5)
    await ws.disconnect()
    return connected


async def test_on_loopback_the_page_of_the_same_host_and_port_opens_a_socket(loopback):
    assert await opens("127.0.0.1:4000", "http://127.0.0.1:4000")
    assert await opens("localhost:4000", "http://localhost:4000")


async def test_on_loopback_a_page_on_another_port_of_the_same_host_is_refused(loopback):
    assert not await opens("127.0.0.1:4000", "http://127.0.0.1:8080")
    assert not await opens("localhost:4000", "http://localhost:3000")


async def test_on_loopback_a_page_of_another_loopback_name_is_refused(loopback):
    assert not await opens("127.0.0.1:4000", "http://localhost:4000")


async def test_on_loopback_a_client_that_sends_no_origin_is_let_in(loopback):
    assert await opens("127.0.0.1:4000", None)


async def test_a_rebound_name_is_refused_even_when_origin_matches_it(loopback):
    assert not await opens("evil.example:4000", "http://evil.example:4000")


async def test_on_0000_a_foreign_page_is_refused_even_with_the_users_cookie(everywhere):
    cookie = await sync_to_async(logged_in_cookie)()
    assert not await opens(LAN, "http://evil.example", cookie)
    assert not await opens(LAN, "http://192.168.1.20:4001", cookie)


async def test_on_0000_the_page_of_the_same_host_opens_a_socket_for_a_logged_in_user(everywhere):
    cookie = await sync_to_async(logged_in_cookie)()
    assert await opens(LAN, f"http://{LAN}", cookie)
    assert await opens("hub.example", "https://hub.example", cookie)
    assert await opens("[fd00::7]:4000", "http://[FD00::7]:4000", cookie)


async def test_on_0000_a_socket_without_origin_is_refused_when_login_is_required(everywhere):
    cookie = await sync_to_async(logged_in_cookie)()
    assert not await opens(LAN, None, cookie)


async def test_an_origin_that_is_not_a_web_page_is_refused(everywhere):
    cookie = await sync_to_async(logged_in_cookie)()
    assert not await opens(LAN, "null", cookie)
    assert not await opens(LAN, f"file://{LAN}", cookie)
    assert not await opens(LAN, "http://192.168.1.20:notaport", cookie)
