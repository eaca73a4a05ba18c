import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

GRACE_SECONDS = 15


class Command(BaseCommand):
    help = (
        "Run ComfyHub: Daphne (HTTP + WebSocket) on COMFYHUB_HOST:COMFYHUB_PORT and the "
        "worker cluster, as one process tree. Ctrl-C or SIGTERM stops both; if either "
        "dies, the other is stopped too and serve exits non-zero."
    )

    def handle(self, *args, **options) -> None:
        if settings.LOGIN_REQUIRED and not get_user_model().objects.exists():
            raise CommandError(
                f"COMFYHUB_HOST={settings.HOST} is reachable from other machines, so "
                "ComfyHub requires a login and no user exists yet. Create one with: "
                "python manage.py createsuperuser"
            )
        stopping = []

        def request_stop(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        children = self.start_children()
        self.stdout.write(f"ComfyHub on http://{settings.HOST}:{settings.PORT}/ (Ctrl-C stops)")
        code = supervise(children, stopping)
        stop_all(children)
        if code:
            sys.exit(code)

    def start_children(self) -> dict[str, subprocess.Popen]:
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        web = [sys.executable, "-m", "daphne", "-b", settings.HOST, "-p", str(settings.PORT)]
        web.append("comfyhub.asgi:application")
        # Each child leads its own process group so stop_all can sweep up anything it
        # forked (the cluster's worker processes) even if the leader dies first.
        spawn = {"cwd": settings.BASE_DIR, "start_new_session": True}
        return {
            "web": subprocess.Popen(web, **spawn),
            "worker": subprocess.Popen([sys.executable, manage, "worker"], **spawn),
        }


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
