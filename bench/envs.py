"""Project environments: uv with a cold cache, uv with a warm one, plain venv + pip.

A stand-in ComfyUI whose requirements.txt lists real packages (numpy, pillow, scipy,
pyyaml, aiohttp). Packages come from wherever pip is configured to get them (on the
bench machine: a local index and find-links, so "cold" means an empty uv cache filled
from local files, not from the internet). Figures: seconds for the first project's
environment (venv + requirements, empty cache), the second project's (warm cache), and
`python -m venv && pip install -r` for the same file; disk of two uv venvs with hard
links counted once, against one. Goals: warm <= 0.2 x pip; two venvs <= 1.2 x one.
Run: .venv/bin/python bench/envs.py
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import embedded  # noqa: F401  (before Django imports: a fresh embedded ComfyHub)
from django.conf import settings

from comfyhub.projects import envs

REQUIREMENTS = "numpy\npillow\nscipy\npyyaml\naiohttp\n"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def uv_environment(venv: Path, requirements: Path, log: Path) -> float:
    installer = envs.Installer(venv, log)
    assert installer.uv, "uv cannot run; see the log"
    return timed(lambda: (installer.make_venv(), installer.install(requirements, None)))


def pip_environment(venv: Path, requirements: Path, log: Path) -> float:
    def build() -> None:
        with log.open("a") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "-r", str(requirements)], check=True, stdout=out, stderr=out)

    return timed(build)


def disk(*paths: Path) -> int:
    """Bytes used; a file hard-linked into several of `paths` counts once (du does that)."""
    out = subprocess.run(["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True)
    return int(out.stdout.decode().splitlines()[-1].split()[0])


def main() -> None:
    root = settings.PROJECTS_DIR
    requirements = root / "requirements.txt"
    requirements.write_text(REQUIREMENTS)
    log = root / "bench.log"
    cold = uv_environment(root / "one", requirements, log)
    warm = uv_environment(root / "two", requirements, log)
    pip = pip_environment(root / "pip", requirements, log)
    one, two = disk(root / "one"), disk(root / "one", root / "two")
    cache = disk(envs.cache_dir())
    print(f"requirements: {REQUIREMENTS.split()}; uv cache at {envs.cache_dir()}")
    print(f"first project (cold uv cache): {cold:.1f} s")
    print(f"second project (warm uv cache): {warm:.1f} s  = {warm / pip:.2f} x pip")
    print(f"python -m venv && pip install -r: {pip:.1f} s")
    mib = 2**20
    print(f"disk: one venv {one / mib:.0f} MiB, two venvs {two / mib:.0f} MiB = {two / one:.2f} x")
    print(f"uv cache (shared by every project) {cache / 2**20:.0f} MiB; log {log}")
    print(f"data dir kept: {os.environ['COMFYHUB_DATA_DIR']}")


if __name__ == "__main__":
    main()
