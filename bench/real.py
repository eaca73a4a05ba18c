"""Projects on the real ComfyUI v0.8.0, default settings, in a fresh temp data dir.

ComfyUI comes from its git bundle at https://github.com/comfyanonymous/ComfyUI.git, as in
the real-ComfyUI tests (tests/realcomfy.py: git maps the address onto a folder), with a
core-nodes workflow (no model, no pack). Figures, each the wall time of one run:
(cold) a whole install with an empty uv cache and no git mirror: clone, venv, ComfyUI's
    requirements (~6 GB), the check that starts ComfyUI;
(warm) a second project, same cache and mirrors;
(steps) the warm project's steps before the check: clone from the mirror, venv,
    requirements (and the steps between, which do nothing here), each timed around;
(stopped) `check_project --json` on a stopped project: ComfyUI started, asked, stopped;
(running) `check_project --json` on a project launched first (runtime.launch).
Goals: warm pre-check steps <= 5 s; check of a running ComfyUI <= 2 s.
An install that fails prints its error and the figures it reached. Everything (projects,
the uv cache, ~6 GB) lives in the temp data dir, removed at the end.
Needs the bundles (see tests/realcomfy.py). Run: .venv/bin/python bench/real.py
"""

import contextlib
import json
import shutil
import sys
import time
from io import StringIO
from pathlib import Path

import embedded  # noqa: F401  (before Django imports: a fresh embedded ComfyHub)
from django.conf import settings
from django.core.management import call_command

from comfyhub.projects import install, runtime
from comfyhub.projects.models import Project
from recovery.engine import run_foreground
from tests.realcomfy import COMFYUI, bundles_dir, missing_bundles, real_github, remote_commit

WARM_STEPS_GOAL = 5.0
RUNNING_CHECK_GOAL = 2.0
BEFORE_CHECK = [step for step in install.STEPS if step != "check"]
WORKFLOW = {
    "nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [512, 512, 1]},
        {"id": 2, "type": "SaveLatent", "mode": 0, "widgets_values": ["latents/bench"]},
    ],
    "links": [],
}


def timing_steps(times: dict[str, float]) -> None:
    """Every install step records its wall time into `times` (the last run's)."""

    def timed(name, run):
        def step(project, job):
            started = time.perf_counter()
            try:
                run(project, job)
            finally:
                times[name] = time.perf_counter() - started

        return step

    install.STEPS = {name: timed(name, run) for name, run in install.STEPS.items()}


def build(name: str, commit: str) -> tuple[Project, float]:
    spec = {
        "comfyui": {"repository": COMFYUI, "commit": commit},
        "nodes": [],
        "models": [],
        "workflow": WORKFLOW,
        "workflow_name": name,
    }
    started = time.perf_counter()
    project = install.create(name, spec)
    job = run_foreground(project.install_job_id)
    elapsed = time.perf_counter() - started
    project.refresh_from_db()
    if job.error_message:
        print(f"  {name}: {project.status}: {job.error_message.splitlines()[-1]}")
    return project, elapsed


def check(project: Project) -> tuple[float, dict]:
    out = StringIO()
    started = time.perf_counter()
    # Exit 1: ComfyUI misses something or could not be asked; the report says which.
    with contextlib.suppress(SystemExit):
        call_command("check_project", project.slug, "--json", stdout=out)
    return time.perf_counter() - started, json.loads(out.getvalue())


def line(label: str, seconds: float, goal: str = "", note: str = "") -> None:
    print(f"{label:<34} {seconds:8.2f} s  {goal:<10} {note}")


def outcome(report: dict) -> str:
    if report["ok"]:
        return "ok"
    if report["error"]:
        return f"not ok: {report['error']['message'].splitlines()[-1]}"
    return f"not ok: {report}"


def checks(project: Project) -> None:
    seconds, report = check(project)
    line("check, stopped project", seconds, note=outcome(report))
    project.refresh_from_db()
    if not project.installed:
        print(f"  no check of a running ComfyUI: the project is {project.status}")
        return
    runtime.launch(project)
    try:
        seconds, report = check(project)
    finally:
        runtime.stop(project)
    line("check, running ComfyUI", seconds, f"<= {RUNNING_CHECK_GOAL:g} s", outcome(report))


def main() -> None:
    bundles = bundles_dir()
    if bundles is None:
        sys.exit(missing_bundles())
    call_command("migrate", verbosity=0)
    # Off the default range, which test suites running beside the bench use: a port taken
    # between its choice and ComfyUI's bind would be answered by someone else's server.
    settings.PORT_RANGE = (4400, 4499)
    times: dict[str, float] = {}
    timing_steps(times)
    with real_github(Path(settings.DATA_DIR) / "github", bundles).mapped():
        commit = remote_commit(COMFYUI, "refs/tags/v0.8.0")
        cold, cold_seconds = build("Cold", commit)
        line("project, cold (whole install)", cold_seconds, note=cold.status)
        warm, warm_seconds = build("Warm", commit)
        line("project, warm (whole install)", warm_seconds, note=warm.status)
        for step in BEFORE_CHECK:
            line(f"  warm step {step}", times.get(step, 0.0))
        steps = sum(times.get(step, 0.0) for step in BEFORE_CHECK)
        line("warm steps before the check", steps, f"<= {WARM_STEPS_GOAL:g} s")
        line("  warm step check", times.get("check", 0.0))
        if not warm.why_not_checkable():
            checks(warm)
        for project in (cold, warm):
            runtime.delete(project)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(settings.DATA_DIR, ignore_errors=True)
