"""The engine across real processes: a SIGKILLed worker, and racing claimers."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from recovery.models import Job, Outcome, Status
from tests.conftest import ROOT, subprocess_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Signal the leader as serve does, then sweep its process group."""
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def start_worker():
    """Starts `manage.py worker` processes; whatever happens, none outlives the test."""
    started = []

    def start(env: dict, log) -> subprocess.Popen:
        command = [sys.executable, str(ROOT / "manage.py"), "worker"]
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc, signal.SIGKILL)


def test_a_killed_workers_job_is_reclaimed_and_finishes_from_its_checkpoint(tmp_path, start_worker):
    env = subprocess_env(tmp_path, COMFYHUB_LEASE_SECONDS="2")
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    params = {"steps": 4, "log": str(trace), "gate_step": 2, "gate": str(gate)}
    job = Job.objects.create(kind="test.steps", params=params)
    with open(tmp_path / "worker.log", "wb") as log:
        first = start_worker(env, log)
        wait_until(lambda: trace.exists() and "start 2" in trace.read_text(), what="step 2")
        os.killpg(first.pid, signal.SIGKILL)  # the whole cluster dies mid-step
        first.wait()
        gate.touch()
        second = start_worker(env, log)
        wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, what="job to finish")
        stop(second)
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert trace.read_text().split("\n")[:-1] == [
        "start 0",
        "end 0",
        "start 1",
        "end 1",
        "start 2",  # killed here, before checkpoint 3
        "start 2",
        "end 2",
        "start 3",
        "end 3",
    ]
    assert list(job.attempts.values_list("outcome", flat=True)) == [Outcome.LOST, Outcome.SUCCEEDED]


def test_two_claimers_racing_for_200_jobs_run_each_exactly_once(tmp_path):
    Job.objects.bulk_create([Job(kind="test.noop") for _ in range(200)])
    env = subprocess_env(tmp_path)
    command = [sys.executable, str(ROOT / "manage.py"), "recover", "--foreground", "--json"]
    racers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ran = [json.loads(racer.communicate(timeout=300)[0])["ran"] for racer in racers]
    print("jobs run by each claimer:", [len(r) for r in ran])
    assert not set(ran[0]) & set(ran[1])
    assert len(ran[0]) + len(ran[1]) == 200
    assert Job.objects.filter(status=Status.SUCCEEDED).count() == 200
    for job in Job.objects.all():
        assert job.attempts.count() == 1


def test_a_killed_worker_resumes_a_project_install_at_the_custom_node_step(
    tmp_path, start_worker, settings
):
    from comfyhub.projects import install
    from comfyhub.projects.models import Project, ProjectStatus
    from tests.fakecomfy import comfyui_repo, node_repo

    comfy, comfy_commits = comfyui_repo(tmp_path / "repos")
    node, node_commits = node_repo(tmp_path / "repos")
    settings.PROJECTS_DIR = tmp_path / "projects"
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    env = subprocess_env(
        tmp_path,
        COMFYHUB_LEASE_SECONDS="2",
        COMFYHUB_ALLOW_LOCAL_REPOS="1",
        COMFYHUB_PROJECTS_DIR=str(settings.PROJECTS_DIR),
        FAKE_NODE_TRACE=str(trace),
        FAKE_NODE_GATE=str(gate),
    )
    spec = {
        "comfyui": {"repository": str(comfy), "commit": comfy_commits[0]},
        "nodes": [{"repository": str(node), "commit": node_commits[0]}],
        "models": [],
    }
    project = install.create("Killed", spec)
    project.install_job.dispatch()
    with open(tmp_path / "worker.log", "wb") as log:
        first = start_worker(env, log)
        wait_until(lambda: trace.exists(), timeout=120, what="the custom node's install.py")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        gate.touch()
        second = start_worker(env, log)
        wait_until(
            lambda: Job.objects.get(pk=project.install_job_id).is_terminal,
            timeout=120,
            what="the install to finish",
        )
        stop(second)
    project.refresh_from_db()
    assert project.status == ProjectStatus.READY
    steps = [
        line.removeprefix("== step ")
        for line in project.install_log.read_text().splitlines()
        if line.startswith("== step ")
    ]
    assert steps.count("clone_comfyui") == steps.count("create_venv") == 1
    assert steps.count("custom_nodes") == 2 and trace.read_text().count("install.py") == 2
    assert list(
        Job.objects.get(pk=project.install_job_id).attempts.values_list("outcome", flat=True)
    ) == [Outcome.LOST, Outcome.SUCCEEDED]
    assert Project.objects.get(pk=project.pk).node_pins[0]["commit"] == node_commits[0]
