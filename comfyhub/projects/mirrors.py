"""Local git mirrors in the data dir: each repository (ComfyUI, every custom node) is
fetched from the network once; later clones are local and fast.

A mirror is updated only when a wanted commit is missing from it (or no commit is
pinned: then the newest is wanted). The project's clone comes from the mirror, and its
`origin` is set back to the real URL, so `git pull` inside a project behaves as usual.
"""

import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from comfyhub.projects import tools


def mirror_path(url: str) -> Path:
    # The name never carries a password a URL may hold: the last path segment and a hash.
    tail = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", tail).lstrip(".-") or "repo"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.DATA_DIR / "mirrors" / f"{name}-{digest}.git"


@contextlib.contextmanager
def locked(mirror: Path) -> Iterator[None]:
    """One writer per mirror: two installs fetching into one repository would collide."""
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with mirror.with_suffix(".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure(url: str, commit: str, log: Path) -> Path:
    """The mirror of `url`, holding `commit` if the remote has it."""
    if commit:
        tools.check_commit(commit)  # before git sees it: "--output=..." is no commit
    mirror = mirror_path(url)
    with locked(mirror):
        if not mirror.exists():
            partial = mirror.with_suffix(".partial")  # a killed fetch leaves only this
            shutil.rmtree(partial, ignore_errors=True)
            tools.git(log, "clone", "--mirror", "--quiet", "--", url, str(partial))
            partial.rename(mirror)
        elif not commit or not has_commit(mirror, commit, log):
            tools.git(log, "fetch", "--quiet", "--prune", "origin", cwd=mirror)
    return mirror


def has_commit(repo: Path, commit: str, log: Path) -> bool:
    try:
        tools.git(log, "cat-file", "-e", "--end-of-options", f"{commit}^{{commit}}", cwd=repo)
    except subprocess.CalledProcessError:
        return False
    return True


def clone(url: str, dest: Path, log: Path, commit: str = "") -> None:
    mirror = ensure(url, commit, log)
    tools.git(log, "clone", "--quiet", "--", str(mirror), str(dest))
    tools.git(log, "remote", "set-url", "origin", url, cwd=dest)
