"""`serve` on 0.0.0.0 (ALLOWED_HOSTS = *): a foreign page gets no socket, even logged in."""

import asyncio
import os
import signal

import httpx
import pytest
import websockets

from tests.conftest import Server, manage, processes_with_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def lan_server(tmp_path):
    server = Server(tmp_path, COMFYHUB_HOST="0.0.0.0")
    env = {**server.env, "DJANGO_SUPERUSER_PASSWORD": "a long test password"}
    assert manage("migrate", "--noinput", env=env).returncode == 0
    made = manage("createsuperuser", "--noinput", "--username=ada", "--email=", env=env)
    assert made.returncode == 0, made.stderr
    yield server.start()
    server.stop()
    for pid in processes_with_env(server.marker):
        os.kill(pid, signal.SIGKILL)


def session_cookie(base: str) -> str:
    with httpx.Client(base_url=base) as client:
        client.get("/admin/login/")
        fields = {"username": "ada", "password": "a long test password", "next": "/"}
        fields["csrfmiddlewaretoken"] = client.cookies["csrftoken"]
        client.post("/admin/login/", data=fields, headers={"Referer": base + "/admin/login/"})
        return f"sessionid={client.cookies['sessionid']}"


async def handshake(base: str, origin: str, cookie: str) -> int:
    """101 when the socket opened, else the HTTP status the handshake was refused with."""
    url = base.replace("http://", "ws://") + "/ws/page/"
    try:
        async with websockets.connect(url, origin=origin, additional_headers={"Cookie": cookie}):
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


def test_serving_on_0000_a_logged_in_users_socket_opens_only_from_its_own_page(lan_server):
    cookie = session_cookie(lan_server.base)
    own = asyncio.run(handshake(lan_server.base, lan_server.base, cookie))
    foreign = asyncio.run(handshake(lan_server.base, "http://evil.example", cookie))
    assert (own, foreign) == (101, 403)
