import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from html import unescape
from io import StringIO
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django_q.brokers import get_broker

from tests.fakeapis import FakeCivitai
from tests.fileserver import FileServer

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("COMFYHUB_REDIS_URL") or "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_reachable(url: str = REDIS_URL) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


def manage(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def command_json(name: str, *args: str) -> tuple[int, dict]:
    """A management command run with --json here: its exit code and its JSON."""
    from django.core.management import call_command

    out = StringIO()
    try:
        call_command(name, *args, "--json", stdout=out)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, json.loads(out.getvalue())


def processes_with_env(marker: str) -> list[int]:
    """PIDs whose environment contains `marker` (how a test finds its own leftovers)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class Server:
    """`manage.py serve` as a real subprocess on a free port, with its own data dir."""

    def __init__(self, data_dir: Path, *args: str, **extra_env: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.marker = f"COMFYHUB_DATA_DIR={data_dir}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
        self.env = {
            **clean,
            "COMFYHUB_DATA_DIR": str(data_dir),
            "COMFYHUB_PORT": str(self.port),
            "COMFYHUB_WORKER_TICK_SECONDS": "0.2",
            **extra_env,
        }
        self.log = data_dir / "serve.log"
        self.proc = None

    def start(self, timeout: float = 60) -> "Server":
        migrated = manage("migrate", "--noinput", env=self.env)
        assert migrated.returncode == 0, migrated.stderr
        return self.relaunch(timeout=timeout)

    def relaunch(self, timeout: float = 60, **extra_env: str) -> "Server":
        """Start `serve` (again) on the same port and data dir, without migrating."""
        self.env.update(extra_env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "serve", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_healthy(timeout)
        return self

    def kill_tree(self) -> None:
        """SIGKILL serve and everything it started, as a power cut would: stop them all
        first (a stopped process cannot fork a replacement for a killed one), then kill."""
        stopped = set()
        while fresh := set(processes_with_env(self.marker)) - stopped:
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= fresh
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        wait_until(lambda: not processes_with_env(self.marker), 10, "the killed tree to exit")

    def wait_healthy(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                body = httpx.get(self.base + "/healthz", timeout=2).json()
                if body.get("worker") == "ok":
                    return body
            except (httpx.HTTPError, ValueError):
                pass  # not up yet (or, briefly, something else answered on the port)
            time.sleep(0.2)
        raise AssertionError(f"serve not healthy in {timeout}s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def server_factory(tmp_path):
    """Servers not started yet (the test prepares their data dir first); all cleaned up."""
    servers = []

    def make(*args: str, **extra_env: str) -> Server:
        server = Server(tmp_path / f"data{len(servers)}", *args, **extra_env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        for pid in processes_with_env(server.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serve_factory(server_factory):
    return lambda *args, **extra_env: server_factory(*args, **extra_env).start()


def post_form(base: str, path: str, fields: dict) -> httpx.Response:
    """POST a page's form as a browser would: CSRF cookie from a GET first."""
    with httpx.Client(base_url=base) as client:
        client.get(path)
        fields = {**fields, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
        response = client.post(path, data=fields, headers={"Referer": base + path})
    assert response.status_code == 302, response.text
    return response


def database_url() -> str:
    """The test database as a COMFYHUB_DATABASE_URL, so subprocesses share it."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite://{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgresql://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def subprocess_env(data_dir: Path, **extra: str) -> dict:
    """Environment for manage.py subprocesses that share this test's database."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    if os.environ.get("COMFYHUB_REDIS_URL"):
        keep["COMFYHUB_REDIS_URL"] = os.environ["COMFYHUB_REDIS_URL"]
    from django.conf import settings

    return {
        **keep,
        "COMFYHUB_DATA_DIR": str(data_dir),
        "COMFYHUB_DATABASE_URL": database_url(),
        # Queue messages are signed: every process sharing the queue shares the key.
        "COMFYHUB_SECRET_KEY": settings.SECRET_KEY,
        "COMFYHUB_JOB_MODULES": "tests.jobkinds",
        "COMFYHUB_WORKER_TICK_SECONDS": "0.2",
        **extra,
    }


def page_socket(html: str) -> str:
    """The URL of the one WebSocket a rendered page opens (ws-connect on its <body>)."""
    found = re.findall(r'ws-connect="([^"]*)"', html)
    assert len(found) == 1, f"a page opens one socket, this one {len(found)}"
    return unescape(found[0])


def watched_jobs(html: str) -> set[int]:
    """The jobs whose cards the page's socket keeps live."""
    jobs = parse_qs(urlsplit(page_socket(html)).query).get("jobs", [""])[0]
    return {int(pk) for pk in jobs.split(",") if pk}


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    """Poll a condition the test cannot be told about directly, with a hard deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def file_server():
    """A loopback file server (tests/fileserver.py) for the test, stopped after it."""
    with FileServer() as running:
        yield running


@pytest.fixture
def models_dir(settings, tmp_path):
    """A fresh, empty models folder; retries come back at once (no backoff)."""
    settings.MODELS_DIR = tmp_path / "models"
    settings.MODELS_DIR.mkdir()
    settings.RECOVERY_BACKOFF_SCALE = 0
    return settings.MODELS_DIR


@pytest.fixture
def project_dirs(settings, models_dir, tmp_path):
    """models_dir plus a fresh projects folder; local git repos allowed. Returns tmp_path."""
    settings.PROJECTS_DIR = tmp_path / "projects"
    settings.PROJECTS_DIR.mkdir()
    # The uv cache and the git mirrors live in the data dir: one per test, beside projects.
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    settings.ALLOW_LOCAL_REPOS = True
    return tmp_path


@pytest.fixture
def pages_dir(settings, project_dirs, tmp_path):
    """Folders for project page tests; the finder's remote sources answer "unavailable" at
    once there."""
    settings.HF_ENDPOINT = settings.CIVITAI_ENDPOINT = f"http://127.0.0.1:{free_port()}"
    return tmp_path


@pytest.fixture
def dispatch(django_capture_on_commit_callbacks):
    """Make a request; return its response and how many tasks it handed to the worker."""

    def run(request):
        before = get_broker().queue_size()
        with django_capture_on_commit_callbacks(execute=True):
            response = request()
        return response, get_broker().queue_size() - before

    return run


@pytest.fixture
def civitai(settings):
    """The fake CivitAI (tests/fakeapis.py) the finder asks."""
    with FakeCivitai() as server:
        settings.CIVITAI_ENDPOINT = server.base
        yield server


@pytest.fixture
def remotes_down(settings):
    """Hugging Face and CivitAI at a port nobody listens on: any request fails at once."""
    settings.HF_ENDPOINT = settings.CIVITAI_ENDPOINT = f"http://127.0.0.1:{free_port()}"
