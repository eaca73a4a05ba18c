"""Subprocesses a project needs (git, venv, pip), run safely.

Argument lists only, never a shell; every call has a timeout and streams its output into
the project's log line by line while it runs (each line redacted: a repository URL may
carry a password); repository URLs and commits are checked before git ever sees them.
"""

import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE
from typing import TextIO
from urllib.parse import urlsplit

from django.conf import settings

from recovery.errors import JobError
from recovery.models import Category
from recovery.redact import redact

HEX = re.compile(r"^[0-9a-f]{7,40}$")
GIT_TIMEOUT = 600
PIP_TIMEOUT = 1800
CHUNK = 65536


def check_repo(url: str) -> str:
    """https URLs; local paths and file:// only with COMFYHUB_ALLOW_LOCAL_REPOS."""
    url = url.strip()
    if not url or url.startswith("-"):
        raise JobError(f"{url!r} is not a repository address.", category=Category.VALIDATION)
    scheme = urlsplit(url).scheme
    if scheme == "https":
        return url
    if settings.ALLOW_LOCAL_REPOS and (
        scheme == "file" or (not scheme and Path(url).is_absolute())
    ):
        return url
    raise JobError(
        f"Repository {url!r} must be an https:// URL"
        + ("" if settings.ALLOW_LOCAL_REPOS else " (local paths need COMFYHUB_ALLOW_LOCAL_REPOS)")
        + ".",
        category=Category.VALIDATION,
    )


def check_commit(commit: str) -> str:
    if not HEX.match(commit or ""):
        raise JobError(
            f"{commit!r} is not a commit (7-40 hex characters).", category=Category.VALIDATION
        )
    return commit


def run(
    args: list[str],
    log: Path,
    cwd: Path | None = None,
    timeout: float = GIT_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> str:
    """Run; copy its stdout and stderr into `log` line by line as it prints; return stdout.

    CalledProcessError on a non-zero exit. At `timeout` the command is killed and a
    JobError (timeout) names it; what it printed until then stays in the log.
    """
    return run_streams(args, log, cwd, timeout, extra_env)[0]


def run_streams(
    args: list[str],
    log: Path,
    cwd: Path | None = None,
    timeout: float = GIT_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> tuple[str, str]:
    """`run`, returning (stdout, stderr): uv reports what it did on stderr."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # Python children (pip, install.py) print at once instead of in 8 KB blocks.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    with log.open("a") as out:
        write_line(out, f"$ {' '.join(args)}")
        with subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=PIPE, stderr=PIPE
        ) as child:
            try:
                stdout, stderr = relay(child, out, time.monotonic() + timeout)
            except TimeoutError:
                child.kill()
                write_line(out, f"(stopped after {timeout:g} s)")
                raise timed_out(args, timeout, log) from None
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, args, stdout, stderr)
    return stdout, stderr


def relay(child: subprocess.Popen, out: TextIO, deadline: float) -> tuple[str, str]:
    """Copy the child's output into `out` until it exits; its (stdout, stderr).

    TimeoutError at `deadline`.
    """
    pipes = {child.stdout.fileno(): Lines(), child.stderr.fileno(): Lines()}
    with selectors.DefaultSelector() as selector:
        for fd in pipes:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            for key, _ in ready:
                chunk = os.read(key.fd, CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                for line in pipes[key.fd].feed(chunk):
                    write_line(out, line)
    try:
        child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # it closed its output but kept running
        raise TimeoutError from None
    return tuple(lines.text() for lines in pipes.values())


class Lines:
    """One output stream, cut into whole lines as its bytes arrive (b"" = the end)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.start = 0  # where the line not yet complete begins

    def feed(self, chunk: bytes) -> list[str]:
        self.data += chunk
        end = len(self.data) if not chunk else self.data.rfind(b"\n", self.start) + 1
        if end <= self.start:
            return []
        done, self.start = self.data[self.start : end], end
        return done.decode(errors="replace").splitlines()

    def text(self) -> str:
        return self.data.decode(errors="replace")


def write_line(out: TextIO, line: str) -> None:
    """One line into a log, secrets removed, on disk at once (a page shows its tail)."""
    out.write(redact(line) + "\n")
    out.flush()


def append(log: Path, line: str) -> None:
    with log.open("a") as out:
        write_line(out, line)


def timed_out(args: list[str], timeout: float, log: Path) -> JobError:
    command = redact(" ".join([Path(args[0]).name, *args[1:]]))
    return JobError(
        f"{command} did not finish within {timeout:g} seconds and was stopped; what it "
        f"printed until then is in {log.name}. This is retried automatically.",
        category=Category.TIMEOUT,
        detail=f"Command: {command}\nTimeout: {timeout:g} s",
    )


def git(log: Path, *args: str, cwd: Path | None = None) -> str:
    return run(["git", *args], log, cwd=cwd)


def clone(url: str, dest: Path, log: Path, commit: str = "") -> None:
    """Clone into `dest` from scratch (a half-cloned folder from a killed run is removed),
    through the data dir's mirror of `url` (fetched only when `commit` is not in it)."""
    from comfyhub.projects import mirrors  # mirrors runs git through this module

    if dest.exists():
        remove_tree(dest)
    mirrors.clone(check_repo(url), dest, log, commit)


def checkout(repo: Path, commit: str, log: Path) -> None:
    check_commit(commit)
    try:
        git(log, "checkout", "--quiet", "--detach", commit, cwd=repo)
    except subprocess.CalledProcessError as exc:
        raise JobError(
            f"Commit {commit} is not in {repo.name}'s repository. Fix the pinned commit, "
            "then press Retry.",
            category=Category.NOT_FOUND,
            detail=exc.stderr[-2000:],
        ) from None


def head(repo: Path, log: Path) -> str:
    return git(log, "rev-parse", "HEAD", cwd=repo).strip()


def python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def has_lines(requirements: Path) -> bool:
    text = (
        requirements.read_bytes().decode("utf-8-sig", errors="replace")
        if requirements.is_file()
        else ""
    )
    return bool(text.strip())


def make_venv(venv: Path, log: Path) -> None:
    run([sys.executable, "-m", "venv", "--clear", str(venv)], log, timeout=300)


def pip_install(
    venv: Path,
    requirements: Path,
    log: Path,
    constraints: tuple[Path, ...] = (),
    options: tuple[str, ...] = (),
) -> None:
    """pip adds its own configured constraint files; `constraints` come on top."""
    if has_lines(requirements):
        pip = [python(venv), "-m", "pip", "install", "--timeout", "60", *options]
        limits = [arg for path in constraints for arg in ("-c", str(path))]
        run(
            [*pip, "-r", str(requirements), *limits],
            log,
            cwd=requirements.parent,
            timeout=PIP_TIMEOUT,
        )


def pip_freeze(venv: Path, log: Path) -> str:
    return run([python(venv), "-m", "pip", "freeze"], log, timeout=120)


def remove_tree(path: Path) -> None:
    """Delete a folder inside the projects folder (never anywhere else)."""
    root = settings.PROJECTS_DIR.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise JobError(
            f"Refusing to delete {path}: it is not inside {root}.", category=Category.PERMISSION
        )
    shutil.rmtree(resolved)
