"""`serve` killed with SIGKILL: nothing it started outlives it, and the restart costs seconds."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import (
    REDIS_URL,
    free_port,
    manage,
    post_form,
    processes_with_env,
    redis_reachable,
    wait_until,
)
from tests.fileserver import FileServer

pytestmark = pytest.mark.e2e

# A stand-in for a Daphne that an older serve left behind: it holds the port and waits.
HOLD_PORT = (
    "import signal, socket, sys; s = socket.socket(); "
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); signal.pause()"
)


def test_a_sigkilled_serve_leaves_no_process_and_the_next_serve_starts_on_its_port(
    serve_factory,
):
    server = serve_factory()
    assert len(processes_with_env(server.marker)) >= 5  # serve, daphne, worker, sentinel, …
    server.proc.kill()
    server.proc.wait()
    wait_until(lambda: not processes_with_env(server.marker), 10, "serve's tree to die with it")
    server.relaunch()
    assert server.proc.poll() is None
    assert httpx.get(server.base + "/healthz").json()["worker"] == "ok"


def test_serve_ends_the_leftovers_of_an_old_serve_and_spares_a_process_that_reused_a_pid(
    server_factory,
):
    server = server_factory()
    spawn = {"start_new_session": True, "stdout": subprocess.DEVNULL}
    leftover_env = {**server.env, "COMFYHUB_SERVE_ID": "old-serve"}
    leftover = subprocess.Popen(
        [sys.executable, "-c", HOLD_PORT, str(server.port)], **spawn, env=leftover_env
    )
    stranger = subprocess.Popen(["sleep", "120"], **spawn)
    record = {"serve": leftover.pid, "id": "old-serve", "groups": [leftover.pid, stranger.pid]}
    (server.data_dir / "serve.pid").write_text(json.dumps(record))
    try:
        server.start()
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_second_serve_on_the_same_data_dir_is_refused_while_the_first_runs(serve_factory):
    server = serve_factory()
    second = manage("serve", env={**server.env, "COMFYHUB_PORT": str(free_port())}, timeout=30)
    assert second.returncode == 1
    assert f"already running on {server.data_dir}" in second.stderr
    assert f"pid {server.proc.pid}" in second.stderr
    assert server.proc.poll() is None


# A Redis database of its own: another test's cluster must not pull these messages.
QUEUE_REDIS = urlunsplit(urlsplit(REDIS_URL)._replace(path="/9"))
BROKERS = [
    pytest.param({}, id="orm"),
    pytest.param({"COMFYHUB_REDIS_URL": QUEUE_REDIS}, id="redis"),
]


@pytest.mark.parametrize("broker", BROKERS)
def test_downloads_queued_when_the_app_was_killed_run_within_10_s_of_the_restart(
    server_factory, broker
):
    if broker and not redis_reachable(QUEUE_REDIS):
        pytest.skip(f"Redis not reachable at {QUEUE_REDIS} (apt-get install redis-server)")
    flush_queue(broker)
    # One worker: the first download runs (slowly), the cluster pulls the next two queue
    # messages into memory, two stay in the broker. Then the power goes.
    server = server_factory(**broker, COMFYHUB_WORKERS="1").start()
    with FileServer() as files:
        for n in range(5):
            url = files.add(f"/m{n}.bin", os.urandom(1 << 20), rate=32 * 1024)
            post_form(server.base, "/downloads/", {"url": url, "dest": f"vae/m{n}.bin"})
        wait_until(lambda: pulled_messages(server, broker) >= 3, 30, "the cluster to pull 3")
        assert statuses(server).count("queued") == 4
        server.kill_tree()
        restarted = time.monotonic()
        server.relaunch(COMFYHUB_WORKERS="5", COMFYHUB_DOWNLOADS_MAX="5")
        remaining = 10 - (time.monotonic() - restarted)
        wait_until(lambda: all_started(server), remaining, "all 5 downloads to run again")


def all_started(server) -> bool:
    return all(status in ("running", "succeeded") for status in statuses(server))


def statuses(server) -> list[str]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "comfyhub.sqlite3")) as db:
        rows = db.execute("SELECT status FROM recovery_job WHERE kind = 'download'")
        return [status for (status,) in rows]


def pulled_messages(server, broker: dict) -> int:
    """Queue messages the cluster took out of the broker (locked, or popped off Redis).

    django-q2's scheduler pushes the daily prune task about 30 s after the cluster starts:
    on a busy machine that lands among our five, so it counts as one more message sent."""
    if broker:
        return 5 + scheduled_tasks(server) - redis_client().llen("django_q:comfyhub:q")
    with contextlib.closing(sqlite3.connect(server.data_dir / "comfyhub.sqlite3")) as db:
        query = "SELECT count(*) FROM django_q_ormq WHERE lock > datetime('now', '+1 hour')"
        return db.execute(query).fetchone()[0]


def scheduled_tasks(server) -> int:
    with contextlib.closing(sqlite3.connect(server.data_dir / "comfyhub.sqlite3")) as db:
        query = "SELECT count(*) FROM django_q_schedule WHERE task IS NOT NULL"
        return db.execute(query).fetchone()[0]


def flush_queue(broker: dict) -> None:
    if broker:
        redis_client().delete("django_q:comfyhub:q")


def redis_client():
    import redis

    return redis.Redis.from_url(QUEUE_REDIS)
