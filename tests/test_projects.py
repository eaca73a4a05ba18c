"""Projects with real git repos, a real venv and a real ComfyUI stand-in process."""

import hashlib
import os
import signal
import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.db import connection

from comfyhub.library import store
from comfyhub.library.models import Download
from comfyhub.library.paths import host_of
from comfyhub.projects import install, restore, runtime, specs, tools
from comfyhub.projects.export import launcher_json
from comfyhub.projects.models import Project, ProjectStatus, RunState
from recovery.engine import run_foreground
from recovery.errors import JobError
from recovery.models import Job, Status
from tests.conftest import wait_until
from tests.fakecomfy import comfyui_repo, node_repo
from tests.fileserver import FileServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def folders(settings, project_dirs):
    settings.PORT_RANGE = (4800, 4900)
    return project_dirs


@pytest.fixture
def repos(tmp_path):
    comfy, comfy_commits = comfyui_repo(tmp_path / "repos")
    node, node_commits = node_repo(tmp_path / "repos")
    return {
        "comfy": str(comfy),
        "comfy_commits": comfy_commits,
        "node": str(node),
        "node_commits": node_commits,
    }


def spec(repos, **extra) -> dict:
    node = {"repository": repos["node"], "commit": repos["node_commits"][0]}
    return {
        "comfyui": {"repository": repos["comfy"], "commit": repos["comfy_commits"][0]},
        "nodes": [node],
        "models": [],
        "workflow": {"nodes": []},
        "workflow_name": "demo",
        **extra,
    }


def build(name: str, project_spec: dict, **kwargs) -> Project:
    project = install.create(name, project_spec, **kwargs)
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def steps_run(project: Project) -> list[str]:
    lines = project.install_log.read_text().splitlines()
    return [line.removeprefix("== step ") for line in lines if line.startswith("== step ")]


def test_a_project_installs_launches_answers_and_stops(repos, folders):
    project = build("Demo One", spec(repos))
    assert project.status == ProjectStatus.READY and project.slug == "demo-one"
    assert project.comfyui_commit == repos["comfy_commits"][0]
    assert project.node_pins[0]["commit"] == repos["node_commits"][0]
    assert (project.comfyui_dir / "user/default/workflows/demo.json").is_file()
    assert str(folders / "models") in (project.comfyui_dir / "extra_model_paths.yaml").read_text()
    runtime.launch(project, timeout=30)
    assert project.run_state == RunState.RUNNING and 4800 <= project.port <= 4900
    stats = httpx.get(f"{project.url}system_stats").json()
    assert "--cpu" in stats["system"]["argv"]
    runtime.stop(project)
    assert project.run_state == RunState.STOPPED and not runtime.answers(project)


def test_a_bad_pinned_commit_fails_at_its_step_and_retry_resumes_there(repos):
    bad = spec(repos)
    bad["nodes"][0]["commit"] = "0" * 40
    project = build("Bad Pin", bad)
    job = Job.objects.get(pk=project.install_job_id)
    assert project.status == ProjectStatus.FAILED and job.error_category == "not_found"
    assert "0000000000" in job.error_message and job.checkpoint_data["current"] == "custom_nodes"
    project.spec["nodes"][0]["commit"] = repos["node_commits"][1]
    project.save()
    assert job.retry_now() and run_foreground(job.pk).status == Status.SUCCEEDED
    project.refresh_from_db()
    assert project.status == ProjectStatus.READY
    assert steps_run(project).count("clone_comfyui") == 1
    assert steps_run(project).count("custom_nodes") == 2


def test_models_are_downloaded_into_the_shared_folder(repos, folders):
    data = os.urandom(300_000)
    with FileServer() as files:
        model = {
            "directory": "checkpoints",
            "name": "m.safetensors",
            "url": files.add("/m.safetensors", data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        project = build("With Model", spec(repos, models=[model]))
    assert project.status == ProjectStatus.READY
    assert (folders / "models/checkpoints/m.safetensors").read_bytes() == data


def test_a_model_without_a_link_fails_until_the_user_goes_without_it(repos):
    model = {"directory": "loras", "name": "lost.safetensors", "url": ""}
    project = build("No Link", spec(repos, models=[model]))
    job = Job.objects.get(pk=project.install_job_id)
    assert project.status == ProjectStatus.FAILED and job.error_category == "not_found"
    assert "loras/lost.safetensors" in job.error_message
    skipped = build("Skip It", spec(repos, models=[model]), skipped=["loras/lost.safetensors"])
    assert skipped.status == ProjectStatus.READY and skipped.models_skipped


def test_rollback_returns_a_changed_node_to_its_restore_point(repos):
    project = build("Roll", spec(repos))
    point = restore.set_node_commit(project, repos["node"], repos["node_commits"][1])
    node_dir = project.comfyui_dir / "custom_nodes" / project.node_pins[0]["name"]
    assert tools.head(node_dir, project.install_log) == repos["node_commits"][1]
    restore.rollback(project, point)
    assert tools.head(node_dir, project.install_log) == repos["node_commits"][0]
    assert project.node_pins[0]["commit"] == repos["node_commits"][0]


def test_export_and_rebuild_give_the_same_pins_and_files(repos, settings):
    settings.COMFYUI_REPO = repos["comfy"]
    model = {
        "directory": "vae",
        "name": "v.bin",
        "url": "https://example.org/v.bin",
        "sha256": "a" * 64,
        "size": 10,
    }
    original = build("Original", spec(repos), skipped=["vae/v.bin"])
    original.spec["models"] = [model]
    exported = launcher_json(original)
    rebuilt_spec = specs.from_launcher(exported)
    rebuilt = build("Copy", rebuilt_spec, skipped=["vae/v.bin"])
    assert rebuilt.comfyui_commit == original.comfyui_commit
    assert [p["commit"] for p in rebuilt.node_pins] == [p["commit"] for p in original.node_pins]
    assert launcher_json(rebuilt)["files"] == exported["files"]


def test_a_crashed_comfyui_is_shown_with_its_last_log_lines(repos):
    project = runtime.launch(build("Crashy", spec(repos)), timeout=30)
    os.killpg(project.pid, signal.SIGKILL)
    os.waitpid(project.pid, 0)  # we launched it: wait for the kill to land
    runtime.refresh(project)
    assert project.run_state == RunState.CRASHED and project.pid is None
    assert "To see the GUI go to" in project.run_message


def test_a_project_whose_process_is_gone_is_not_running_after_a_restart(repos):
    project = runtime.launch(build("Restart", spec(repos)), timeout=30)
    os.killpg(project.pid, signal.SIGKILL)
    os.waitpid(project.pid, 0)
    reloaded = runtime.refresh(Project.objects.get(pk=project.pk))
    assert reloaded.run_state == RunState.CRASHED


def test_a_busy_port_is_skipped(repos, settings):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        settings.PORT_RANGE = (taken, taken + 50)
        project = Project.objects.create(name="p", slug="p")
        runtime.assign_port(project)
    assert project.port != taken and project.port <= taken + 50


def test_remote_repositories_must_be_https(settings):
    settings.ALLOW_LOCAL_REPOS = False
    for url in ("/tmp/repo", "file:///tmp/repo", "git://host/x", "-uhack", "http://h/x"):
        with pytest.raises(JobError) as error:
            tools.check_repo(url)
        assert error.value.category == "validation"
    assert tools.check_repo("https://github.com/org/repo") == "https://github.com/org/repo"


def test_commits_must_be_hex():
    with pytest.raises(JobError):
        tools.check_commit("main; rm -rf /")
    assert tools.check_commit("a" * 40) == "a" * 40


def test_deleting_a_project_removes_its_folder_and_never_models(repos, folders):
    (folders / "models/vae").mkdir()
    (folders / "models/vae/keep.bin").write_bytes(b"shared")
    store.keep(folders / "models/vae/keep.bin", hashlib.sha256(b"shared").hexdigest())
    project = build("Gone", spec(repos))
    os.link(folders / "models/vae/keep.bin", project.folder / "linked.bin")  # a name it held
    runtime.delete(project)
    assert not project.folder.exists() and not Project.objects.filter(pk=project.pk).exists()
    assert (folders / "models/vae/keep.bin").read_bytes() == b"shared"
    assert (folders / "models/vae/keep.bin").stat().st_nlink == 2  # the name + the store


def test_adding_a_node_takes_a_restore_point_and_rollback_removes_it(repos, tmp_path):
    project = build("Grow", spec(repos))
    extra, commits = node_repo(tmp_path / "more", "Extra-Nodes")
    point = restore.add_node(project, str(extra), commits[1])
    assert (project.comfyui_dir / "custom_nodes/Extra-Nodes").is_dir()
    assert point.reason.startswith("adding") and len(point.node_pins) == 1
    restore.rollback(project, point)
    assert not (project.comfyui_dir / "custom_nodes/Extra-Nodes").exists()
    assert [pin["name"] for pin in project.node_pins] == ["ComfyUI-Fake-Nodes"]


def test_a_reinstall_records_a_restore_point_and_runs_every_step_again(repos):
    project = build("Again", spec(repos))
    point = restore.reinstall(project)
    assert point.comfyui_commit == project.comfyui_commit
    assert run_foreground(project.install_job_id).status == Status.SUCCEEDED
    assert steps_run(Project.objects.get(pk=project.pk)).count("clone_comfyui") == 2


def test_the_worker_tick_queues_one_restart_and_never_waits_for_comfyui(
    repos, tmp_path, monkeypatch
):
    project = runtime.launch(build("Phoenix", spec(repos)), timeout=30)
    project.touch(auto_restart=True)
    os.killpg(project.pid, signal.SIGKILL)
    os.waitpid(project.pid, 0)
    runtime.watch()  # notices the crash
    monkeypatch.setenv("FAKE_COMFY_GATE", str(tmp_path / "gate"))  # a start that takes long
    due = Project.objects.get(pk=project.pk).updated_at + timedelta(seconds=2)
    started = time.monotonic()
    runtime.watch(now=due)
    runtime.watch(now=due + timedelta(minutes=10))
    assert time.monotonic() - started < 5  # the tick did not wait for ComfyUI
    launch = Job.objects.get(kind="project_launch")  # one, however many ticks saw the crash
    assert launch.status == Status.QUEUED and Project.objects.get(pk=project.pk).restarts == 1
    (tmp_path / "gate").touch()
    assert run_foreground(launch.pk).status == Status.SUCCEEDED
    runtime.stop(Project.objects.get(pk=project.pk))


def test_comfyui_output_reaches_its_log_while_it_starts_with_secrets_redacted(
    repos, tmp_path, monkeypatch
):
    project = build("Chatty", spec(repos))
    monkeypatch.setenv("FAKE_COMFY_SAY", "fetching https://user:hunter2@example.org/x.bin")
    monkeypatch.setenv("FAKE_COMFY_GATE", str(tmp_path / "gate"))
    launcher = threading.Thread(target=in_thread(runtime.launch), args=(project, 60))
    launcher.start()
    try:
        wait_until(lambda: "fetching" in project.log_tail("comfyui"), timeout=30, what="a line")
    finally:
        (tmp_path / "gate").touch()
        launcher.join()
    log = project.log_tail("comfyui")
    assert "hunter2" not in log and "https://user:[redacted]@example.org/x.bin" in log
    runtime.stop(project)


def test_cancelling_a_models_download_mid_install_stops_at_models_until_the_user_chooses(repos):
    data = os.urandom(2_000_000)
    with FileServer() as files:
        model = {"directory": "checkpoints", "name": "big.bin", "url": files.add("/b", data)}
        files.add("/b", data, rate=10_000)  # minutes, even over 8 connections
        project = install.create("Big", spec(repos, models=[model]))
        download = Download.objects.get()  # queued at once, joined by the models step
        canceller = threading.Thread(target=in_thread(cancel_once_moving), args=(download.job_id,))
        canceller.start()
        job = run_foreground(project.install_job_id)
        canceller.join()
        project.refresh_from_db()
        assert job.status == Status.FAILED and project.status == ProjectStatus.FAILED
        assert job.checkpoint_data["current"] == "models"
        assert "You cancelled the download of checkpoints/big.bin" in job.error_message
        files.add("/b", data)  # full speed again
        project.download_again(model)
        assert run_foreground(project.install_job_id).status == Status.SUCCEEDED
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.READY, Project.objects.get(
        pk=project.pk
    ).last_check


def test_a_model_downloaded_again_while_the_models_step_is_busy_is_joined_before_it_ends(repos):
    slow, other = os.urandom(2_000_000), os.urandom(600_000)
    with FileServer() as files:
        a = {"directory": "checkpoints", "name": "a.bin", "url": files.add("/a", slow, rate=10_000)}
        b = {"directory": "loras", "name": "b.bin", "url": files.add("/b", other, rate=100_000)}
        project = install.create("Busy", spec(repos, models=[a, b]))
        first_a, first_b = (
            Download.objects.get(dest=m["directory"] + "/" + m["name"]) for m in (a, b)
        )

        def user():
            cancel_once_moving(first_a.job_id)
            moving = Job.objects.filter(pk=first_b.job_id, progress_done__gt=0)
            wait_until(moving.exists, what="the models step to move on to b")
            files.add("/a", slow)  # full speed for the new try
            project.download_again(a)

        clicker = threading.Thread(target=in_thread(user))
        clicker.start()
        job = run_foreground(project.install_job_id)
        clicker.join()
    assert job.status == Status.SUCCEEDED, job.error_message
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.READY, Project.objects.get(
        pk=project.pk
    ).last_check


def cancel_once_moving(pk: int) -> None:
    moving = Job.objects.filter(pk=pk, status=Status.RUNNING, progress_done__gt=0)
    wait_until(moving.exists, what="the download to move")
    assert Job.objects.get(pk=pk).cancel()


def in_thread(func):
    """`func` for a thread: its database connection closed when it ends."""

    def run(*args):
        try:
            func(*args)
        finally:
            connection.close()

    return run


def failing_for_good(files: FileServer) -> dict[str, str]:
    """First sources that fail for good: gone (404), or closed to us (401, 403)."""
    return {
        "404": files.url("/gone.bin"),
        "401": files.add("/locked.bin", b"locked", auth="Bearer not-ours"),
        "403": files.add("/refused.bin", b"locked", script=["status:403"]),
    }


def test_a_model_whose_first_source_fails_for_good_comes_from_the_next(repos, folders):
    data = {how: os.urandom(100_000) for how in ("404", "401", "403")}
    with FileServer() as files:
        models = [
            {"directory": "vae", "name": f"{how}.bin", "url": first, "sources": [first, second]}
            for how, first in failing_for_good(files).items()
            for second in [files.add(f"/{how}-mirror.bin", data[how])]
        ]
        project = build("Mirrors", spec(repos, models=models))
    assert project.status == ProjectStatus.READY
    for how in data:
        assert (folders / f"models/vae/{how}.bin").read_bytes() == data[how]
        log = project.install_log.read_text()
        assert f"vae/{how}.bin: downloaded from mirror 2 of 2 ({host_of(files.base)})" in log
        assert Download.objects.filter(dest=f"vae/{how}.bin").count() == 1  # one, two sources


def test_a_server_error_on_the_first_source_does_not_skip_to_the_next(repos, settings):
    # Two tries of the download instead of six, and the install itself does not retry.
    settings.RECOVERY_KIND_POLICIES = {
        "download": {"server": {"max_attempts": 2}},
        "project_install": {"server": {"max_attempts": 1}},
    }
    with FileServer() as files:
        sources = [files.add("/busy.bin", b"x", script=["status:503"] * 99), files.add("/m", b"y")]
        model = {"directory": "vae", "name": "m.bin", "url": sources[0], "sources": sources}
        project = build("Busy Mirror", spec(repos, models=[model]))
        asked = [r["path"] for r in files.requests]
    job = Job.objects.get(pk=project.install_job_id)
    assert project.status == ProjectStatus.FAILED and job.error_category == "server"
    assert asked == ["/busy.bin", "/busy.bin"]  # its retries; never the next source


def input_file(files: FileServer, data: bytes, path: str) -> dict:
    url = files.add("/" + path.rsplit("/", 1)[-1], data)
    sha = hashlib.sha256(data).hexdigest()
    return {"path": path, "url": url, "sources": [url], "sha256": sha, "size": len(data)}


def test_an_input_file_lands_in_comfyui_input_and_a_rerun_places_it_without_network(repos, folders):
    data = os.urandom(50_000)
    with FileServer() as files:
        image = input_file(files, data, "input/sub/portrait.jpg")
        project = build("Inputs", spec(repos, files=[image]))
        placed = project.comfyui_dir / "input/sub/portrait.jpg"
        job = Job.objects.get(pk=project.install_job_id)
        job.checkpoint(files_done=[])
        placed.unlink()
        install.input_files(project, job)
        asked = [r["path"] for r in files.requests if r["method"] == "GET"]
    assert project.status == ProjectStatus.READY and asked == ["/portrait.jpg"]
    assert placed.read_bytes() == data
    stored = folders / "models/.downloads/input" / image["sha256"] / "portrait.jpg"
    assert placed.stat().st_ino == stored.stat().st_ino  # a link: one copy of the bytes
    assert [p for p in folders.rglob("portrait.jpg") if "models" not in p.parts] == [placed]


@pytest.mark.parametrize("path", ["input/../../x.png", "input/link/x.png", "/etc/x.png"])
def test_an_input_file_is_never_placed_outside_comfyui_input(path, tmp_path):
    project = Project.objects.create(name="Hostile", slug="hostile")
    (project.comfyui_dir / "input").mkdir(parents=True)
    (project.comfyui_dir / "input/link").symlink_to(tmp_path)
    with pytest.raises(JobError) as error:
        install.input_target(project, path)
    assert error.value.category == "validation" and not (tmp_path / "x.png").exists()


def test_export_round_trips_every_source_and_the_input_files(settings):
    sources = ["https://a.example/m.bin", "https://b.example/m.bin"]
    model = {"directory": "vae", "name": "m.bin", "url": sources[0], "sha256": "a" * 64}
    image = {"path": "input/a.png", "url": "https://a.example/a.png", "sha256": "", "size": 3}
    project = Project.objects.create(
        name="Export",
        slug="export",
        spec={
            "models": [{**model, "size": 5, "sources": sources}],
            "files": [{**image, "sources": [image["url"]]}],
            "workflow": {"nodes": []},
        },
    )
    exported = launcher_json(project)
    assert [f["download_url"] for f in exported["files"][0]] == sources
    assert exported["files"][1][0]["dest_relative_path"] == "input/a.png"
    rebuilt = specs.from_launcher(exported)
    assert rebuilt["models"] == project.spec["models"] and rebuilt["files"] == project.spec["files"]
