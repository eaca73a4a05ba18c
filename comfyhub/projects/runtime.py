"""Running a project's ComfyUI: a free port, a child process, a health check, a clean stop.

ComfyUI runs under its log pump in a session of their own (they outlive the command that
launched them); the pump's pid and the port are stored on the project, and its state is
always re-derived from the process table, so a restart of ComfyHub never shows a dead
ComfyUI as running. Pages derive it without writing (`observed`); the worker's tick
(`watch`), jobs and POSTs record it (`refresh`).
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from comfyhub.projects import tools
from comfyhub.projects.models import Project, RunState
from recovery.errors import JobError
from recovery.lifeline import exited_within
from recovery.models import Category

HEALTH_TIMEOUT = 120.0
STOP_GRACE = 10.0
LOG_TAIL = 20
CRASHED = "ComfyUI stopped unexpectedly."
START_LOG_BYTES = 4 * 2**20  # a start that fails prints a traceback near its end
# An exception's own line: "ModuleNotFoundError: No module named 'requests'",
# "torch.OutOfMemoryError: ...", "SystemExit: 1", "KeyboardInterrupt".
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Exit)\b(?::.*)?$")
NO_MODULE = re.compile(r"No module named '(?P<module>[^']+)'")


class StartFailed(JobError):
    """ComfyUI exited while it was starting. `cause` is what its log says why ({"message",
    "module"}, see exit_cause): a finding of the check, not a failure to reach ComfyUI."""

    category = Category.DEPENDENCY

    def __init__(self, message: str, cause: dict):
        super().__init__(message)
        self.cause = cause


def launch(project: Project, timeout: float = HEALTH_TIMEOUT) -> Project:
    """Start ComfyUI (unless it already runs) and return once it answers over HTTP."""
    refresh(project)
    if project.run_state == RunState.RUNNING:
        return project
    if not project.installed:
        raise JobError(
            f"{project.name} is not installed yet ({project.get_status_display()}).",
            category=Category.VALIDATION,
        )
    return boot(project, timeout)


def boot(project: Project, timeout: float = HEALTH_TIMEOUT) -> Project:
    """Start ComfyUI whatever the project's status (the install's check starts it before
    the project is installed) and return once it answers over HTTP."""
    assign_port(project)
    log_start = project.run_log.stat().st_size if project.run_log.exists() else 0
    child = start(project)
    project.touch(
        pid=child.pid, run_state=RunState.STARTING, run_message="", run_log_start=log_start
    )
    wait_healthy(project, child, timeout)
    return project


def start(project: Project) -> subprocess.Popen:
    """ComfyUI under its log pump (comfyhub.projects.logpump), in a session of their own.
    The pump's pid is the project's: its command line names main.py and the port, and it
    exits with ComfyUI's status."""
    pump = [sys.executable, "-m", "comfyhub.projects.logpump", str(project.run_log)]
    with project.run_log.open("ab") as own_errors:  # the pump's, if it cannot start
        return subprocess.Popen(
            [*pump, str(project.comfyui_dir), "--", *command(project)],
            cwd=settings.BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines as printed, not 8 KB blocks
            stdin=subprocess.DEVNULL,
            stdout=own_errors,
            stderr=own_errors,
            start_new_session=True,
        )


def command(project: Project) -> list[str]:
    args = [
        str(project.venv / "bin" / "python"),
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(project.port),
    ]
    if not has_gpu():
        args.append("--cpu")
    return args + [str(arg) for arg in project.extra_args]


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, timeout=10).returncode == 0


def assign_port(project: Project) -> None:
    """A port from COMFYHUB_PORT_RANGE no other project holds and nothing listens on."""
    if project.port and port_is_free(project.port):
        return
    low, high = settings.PORT_RANGE
    taken = set(Project.objects.exclude(pk=project.pk).values_list("port", flat=True))
    for port in range(low, high + 1):
        if port in taken or not port_is_free(port):
            continue
        with contextlib.suppress(IntegrityError):
            project.touch(port=port)
            return
    raise JobError(
        f"No free port in {low}-{high}; stop a project or widen COMFYHUB_PORT_RANGE.",
        category=Category.VALIDATION,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_healthy(project: Project, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            cause = exit_cause(project)
            crashed(project, f"ComfyUI did not start: {cause['message']}")
            raise StartFailed(project.run_message, cause)
        if answers(project):
            project.touch(run_state=RunState.RUNNING)
            return
        # HTTP readiness has no notification: probe every 0.2 s, but wake at once if the
        # process dies meanwhile.
        exited_within(child.pid, 0.2)
    stop(project)
    project.touch(
        run_state=RunState.CRASHED,
        run_message=f"ComfyUI did not answer within {timeout:.0f} s.\n{log_tail(project)}",
    )
    raise JobError(project.run_message, category=Category.TIMEOUT)


def exit_cause(project: Project) -> dict:
    """Why the current run ended, from its log: {"message": the last exception's own line
    (else the last line printed), "module": the module of a ModuleNotFoundError, or ""}."""
    lines = [line.rstrip() for line in current_run(project) if line.strip()]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    after = lines[tracebacks[-1] + 1 :] if tracebacks else lines
    raised = [line for line in after if EXCEPTION_LINE.match(line)]
    if raised:
        message = raised[0]  # what follows it is ComfyUI's own farewell, if anything
    else:
        message = after[-1] if after else "it exited without printing anything."
    found = NO_MODULE.search(message)
    return {"message": message, "module": found["module"] if found else ""}


def current_run(project: Project) -> list[str]:
    """The lines the current run wrote to its log (from run_log_start, at most the last
    START_LOG_BYTES)."""
    if not project.run_log.is_file():
        return []
    size = project.run_log.stat().st_size
    start = project.run_log_start if project.run_log_start <= size else 0
    with project.run_log.open("rb") as log:
        log.seek(max(start, size - START_LOG_BYTES))
        return log.read().decode(errors="replace").splitlines()


def answers(project: Project) -> bool:
    try:
        return httpx.get(f"{project.url}system_stats", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(project: Project) -> Project:
    """SIGTERM the process group, SIGKILL after a grace period."""
    if project.pid and is_ours(project):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(project.pid, signal.SIGTERM)
        exited_within(project.pid, STOP_GRACE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(project.pid, signal.SIGKILL)
        reap(project.pid)
    project.touch(run_state=RunState.STOPPED, pid=None, run_message="")
    return project


def refresh(project: Project) -> Project:
    """Re-derive the run state from the process table and record it (survives ComfyHub
    restarts)."""
    if died(project):
        crashed(project, CRASHED)
    return project


def observed(project: Project) -> Project:
    """`project` with the run state the process table shows, in memory only: a page shows
    a dead ComfyUI as crashed, and the worker's tick records it."""
    if died(project):
        project.run_state, project.pid = RunState.CRASHED, None
        project.run_message = f"{CRASHED}\n{log_tail(project)}"
    return project


def died(project: Project) -> bool:
    return project.run_state in (RunState.RUNNING, RunState.STARTING) and not is_ours(project)


def crashed(project: Project, why: str) -> None:
    project.touch(run_state=RunState.CRASHED, pid=None, run_message=f"{why}\n{log_tail(project)}")


def is_ours(project: Project) -> bool:
    """The stored pid is alive and is this project's ComfyUI (pids get reused)."""
    if not project.pid:
        return False
    reap(project.pid)
    try:
        with open(f"/proc/{project.pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return b"main.py" in args and str(project.port).encode() in args


def reap(pid: int) -> None:
    """Collect our own dead child so it doesn't linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(project: Project, lines: int = LOG_TAIL) -> str:
    if not project.run_log.exists():
        return ""
    return "\n".join(project.run_log.read_text(errors="replace").splitlines()[-lines:])


def delete(project: Project) -> None:
    """Stop it, remove its folder and its row. Shared models are never touched."""
    stop(project)
    if project.folder.exists():
        tools.remove_tree(project.folder)
    project.delete()


def watch(now=None) -> None:
    """Worker tick: notice crashes; queue a launch job for each crashed project that asked
    to be restarted, with backoff. Never launches here: ComfyUI may take minutes to answer,
    and the tick carries the heartbeat, the reaper and dispatch."""
    now = now or timezone.now()
    for project in Project.objects.filter(run_state__in=[RunState.RUNNING, RunState.STARTING]):
        refresh(project)
    for project in Project.objects.filter(run_state=RunState.CRASHED, auto_restart=True):
        due = project.updated_at + timedelta(seconds=min(2**project.restarts, 300))
        if now < due or project.active_job("project_launch"):
            continue
        if project.claim_restart(now):
            project.queue_job("project_launch")
