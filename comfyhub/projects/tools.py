"""Subprocesses a project needs (git, venv, pip), run safely.

Argument lists only, never a shell; every call has a timeout and appends its output to the
project's log; repository URLs and commits are checked before git ever sees them.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from recovery.errors import JobError

HEX = re.compile(r"^[0-9a-f]{7,40}$")
GIT_TIMEOUT = 600
PIP_TIMEOUT = 1800


def check_repo(url: str) -> str:
    """https URLs; local paths and file:// only with COMFYHUB_ALLOW_LOCAL_REPOS."""
    url = url.strip()
    if not url or url.startswith("-"):
        raise JobError(f"{url!r} is not a repository address.", category="validation")
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
        category="validation",
    )


def check_commit(commit: str) -> str:
    if not HEX.match(commit or ""):
        raise JobError(f"{commit!r} is not a commit (7-40 hex characters).", category="validation")
    return commit


def run(args: list[str], log: Path, cwd: Path | None = None, timeout: float = GIT_TIMEOUT) -> str:
    """Run, append stdout+stderr to `log`, return stdout; CalledProcessError on failure."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        out.write(result.stdout + result.stderr)
    if result.returncode:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
    return result.stdout


def git(log: Path, *args: str, cwd: Path | None = None) -> str:
    return run(["git", *args], log, cwd=cwd)


def clone(url: str, dest: Path, log: Path) -> None:
    """Clone into `dest` from scratch (a half-cloned folder from a killed run is removed)."""
    if dest.exists():
        remove_tree(dest)
    git(log, "clone", "--quiet", "--", check_repo(url), str(dest))


def checkout(repo: Path, commit: str, log: Path) -> None:
    check_commit(commit)
    try:
        git(log, "checkout", "--quiet", "--detach", commit, cwd=repo)
    except subprocess.CalledProcessError as exc:
        raise JobError(
            f"Commit {commit} is not in {repo.name}'s repository. Fix the pinned commit, "
            "then press Retry.",
            category="not_found",
            detail=exc.stderr[-2000:],
        ) from None


def head(repo: Path, log: Path) -> str:
    return git(log, "rev-parse", "HEAD", cwd=repo).strip()


def make_venv(venv: Path, log: Path) -> None:
    run([sys.executable, "-m", "venv", "--clear", str(venv)], log, timeout=300)


def pip_install(venv: Path, requirements: Path, log: Path) -> None:
    if requirements.is_file() and requirements.read_text().strip():
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--timeout", "60"]
        run([*pip, "-r", str(requirements)], log, cwd=requirements.parent, timeout=PIP_TIMEOUT)


def pip_freeze(venv: Path, log: Path) -> str:
    return run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], log, timeout=120)


def remove_tree(path: Path) -> None:
    """Delete a folder inside the projects folder (never anywhere else)."""
    root = settings.PROJECTS_DIR.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise JobError(
            f"Refusing to delete {path}: it is not inside {root}.", category="permission"
        )
    shutil.rmtree(resolved)
