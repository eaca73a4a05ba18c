import contextlib
import fcntl
import functools
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from recovery.lifeline import die_with_parent

GRACE_SECONDS = 15
LEFTOVER_GRACE_SECONDS = 10
# Every child of one serve carries the same random id in its environment: how the next
# serve tells a leftover of ours from a process that got a recycled pid.
SERVE_ID_ENV = "COMFYHUB_SERVE_ID"


class Command(BaseCommand):
    help = (
        "Run ComfyHub: Daphne (HTTP + WebSocket) on COMFYHUB_HOST:COMFYHUB_PORT and the "
        "worker cluster, as one process tree. Ctrl-C or SIGTERM stops both; if either "
        "dies, the other is stopped too and serve exits non-zero. If serve itself is "
        "killed, its children die with it; whatever an older serve still left running "
        "(recorded in <data dir>/serve.pid) is ended at the next start. One serve per "
        "data dir: a second one is refused."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help='announce the start as one JSON line: {"status": "running", "url", "pid"}',
        )

    def handle(self, *args, **options) -> None:
        if settings.LOGIN_REQUIRED and not get_user_model().objects.exists():
            raise CommandError(
                f"COMFYHUB_HOST={settings.HOST} is reachable from other machines, so "
                "ComfyHub requires a login and no user exists yet. Create one with: "
                "python manage.py createsuperuser"
            )
        pidfile = Pidfile(Path(settings.DATA_DIR) / "serve.pid")
        ended = pidfile.take_over()
        if ended:
            self.stderr.write(f"serve: ended {len(ended)} leftover process(es): {ended}")
        stopping = []

        def request_stop(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        serve_id = secrets.token_hex(16)
        children = self.start_children(serve_id)
        pidfile.record(serve_id, children.values())
        url = f"http://{settings.HOST}:{settings.PORT}/"
        if options["json"]:
            self.stdout.write(json.dumps({"status": "running", "url": url, "pid": os.getpid()}))
        else:
            self.stdout.write(f"ComfyHub on {url} (Ctrl-C stops)")
        self.stdout.flush()  # a supervisor reading a pipe or file sees it now
        code = supervise(children, stopping)
        stop_all(children)
        pidfile.clear()
        if code:
            sys.exit(code)

    def start_children(self, serve_id: str) -> dict[str, subprocess.Popen]:
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        web = [sys.executable, "-m", "daphne", "-b", settings.HOST, "-p", str(settings.PORT)]
        web.append("comfyhub.asgi:application")
        spawn = {
            "cwd": settings.BASE_DIR,
            "env": {**os.environ, SERVE_ID_ENV: serve_id},
            # Each child leads its own process group so stop_all can sweep up anything
            # it forked (the cluster's worker processes) even if the leader dies first.
            "start_new_session": True,
            # serve has no threads, so a preexec_fn is safe here.
            "preexec_fn": functools.partial(die_with_parent, os.getpid()),
        }
        return {
            "web": subprocess.Popen(web, **spawn),
            "worker": subprocess.Popen([sys.executable, manage, "worker"], **spawn),
        }


class Pidfile:
    """<data dir>/serve.pid: the serve running on this data dir and its children.

    serve holds an exclusive flock on the file for as long as it runs. The kernel drops
    the lock when serve dies, however it dies, so a lock that can be taken means no serve
    runs here, and a pid never has to be trusted for that. The file records the process
    groups of serve's children and the id in their environment; a later serve ends the
    processes of those groups that still carry the id (a project's ComfyUI runs in its
    own session, so it is left alone, as a stop of serve leaves it).
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def take_over(self) -> list[int]:
        """Lock the file (or refuse: another serve runs here) and end what the previous
        serve left running; the pids ended."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(
                f"ComfyHub is already running on {self.path.parent} (serve, pid "
                f"{self.read().get('serve', '?')}); stop it first, or give this one its own "
                "COMFYHUB_DATA_DIR."
            ) from None
        old = self.read()
        return end_leftovers(old.get("groups") or [], old.get("id") or "")

    def record(self, serve_id: str, children) -> None:
        self.write({"serve": os.getpid(), "id": serve_id, "groups": [c.pid for c in children]})

    def clear(self) -> None:
        self.write({})

    def read(self) -> dict:
        try:
            record = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def write(self, record: dict) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record).encode(), 0)
        os.fsync(self.fd)


def end_leftovers(groups: list, serve_id: str) -> list[int]:
    """SIGKILL the processes of `groups` that carry `serve_id`; the pids ended.

    A group id is not handed out again while a member lives, so a group with one process
    carrying the id is wholly ours, and one signal ends all of it: nothing in it gets to
    fork a replacement between two kills.
    """
    members = {pid: process_group(pid) for pid in process_ids()}
    ours = {group for pid, group in members.items() if group in groups and carries(pid, serve_id)}
    for group in ours:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    ended = [pid for pid, group in members.items() if group in ours]
    wait_gone(ended, LEFTOVER_GRACE_SECONDS)
    return ended


def process_ids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def carries(pid: int, serve_id: str) -> bool:
    """Whether the process's environment holds this serve id (ours, not a reused pid)."""
    if not serve_id:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return False
    return f"{SERVE_ID_ENV}={serve_id}".encode() in environ


def wait_gone(pids: list[int], timeout: float) -> None:
    """Until every pid has exited (its port is free again), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)


def supervise(children: dict[str, subprocess.Popen], stopping: list) -> int:
    """Block until a stop is requested (-> 0) or a child exits on its own (-> 1).

    Nothing polls: select() wakes on a child's pidfd (it exited) or on the signal
    wakeup pipe (SIGTERM/SIGINT arrived and request_stop ran).
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    exits = {os.pidfd_open(child.pid): name for name, child in children.items()}
    try:
        while not stopping:
            ready, _, _ = select.select([wake_read, *exits], [], [])
            for fd in ready:
                if fd in exits:
                    child = children[exits[fd]]
                    print(
                        f"serve: {exits[fd]} exited with {child.wait()}; stopping", file=sys.stderr
                    )
                    return 1
            os.read(wake_read, 512)
        return 0
    finally:
        signal.set_wakeup_fd(-1)
        for fd in [wake_read, wake_write, *exits]:
            os.close(fd)


def stop_all(children: dict[str, subprocess.Popen]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        kill_group(child.pid)
        child.wait()


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
