"""Asking a project's ComfyUI (the stand-in from tests/fakecomfy.py) what it sees."""

import json
from datetime import timedelta
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from comfyhub.projects import check, install, runtime, tools
from comfyhub.projects.models import Project, ProjectStatus, RunState
from recovery.engine import run_foreground, run_once
from recovery.models import Category, Job, Status
from tests.fakecomfy import comfyui_repo, make_repo

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BROKEN = 'raise RuntimeError("boom: the weights are missing")\n'
WORKING = 'NODE_CLASS_MAPPINGS = {"FakeSampler": object}\n'


@pytest.fixture(autouse=True)
def folders(settings, project_dirs):
    settings.PORT_RANGE = (4700, 4799)
    return project_dirs


@pytest.fixture
def comfy(tmp_path):
    path, commits = comfyui_repo(tmp_path / "repos")
    return {"repository": str(path), "commit": commits[0]}


def pack(tmp_path, name: str, first: str, second: str = WORKING) -> dict:
    """A pack repo: its first commit's __init__.py is `first`, its second's `second`."""
    path, commits = make_repo(
        tmp_path / "repos" / name, {"__init__.py": first}, {"__init__.py": second}
    )
    return {"repository": str(path), "commit": commits[0], "commits": commits}


def node(node_id: int, node_type: str, *values) -> dict:
    return {"id": node_id, "type": node_type, "mode": 0, "widgets_values": list(values)}


def build(name: str, comfy: dict, nodes=(), models=(), workflow=(), **kwargs) -> Project:
    spec = {
        "comfyui": comfy,
        "nodes": [{"repository": n["repository"], "commit": n["commit"]} for n in nodes],
        "models": list(models),
        "workflow": {"nodes": list(workflow), "links": []},
        "workflow_name": name,
    }
    project = install.create(name, spec, **kwargs)
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def check_json(slug: str) -> tuple[int, dict]:
    out = StringIO()
    try:
        call_command("check_project", slug, "--json", stdout=out)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, json.loads(out.getvalue())


def test_a_model_in_geometry_estimation_ends_ready_and_comfyui_lists_it(comfy, folders):
    # And a model in the legacy t2i_adapter folder, which ComfyUI reads into controlnet.
    for key in ("geometry_estimation/moge.safetensors", "t2i_adapter/adapter.safetensors"):
        (folders / "models" / key).parent.mkdir(parents=True)
        (folders / "models" / key).write_bytes(b"weights")
    model = {"directory": "geometry_estimation", "name": "moge.safetensors", "url": ""}
    adapter = {"directory": "t2i_adapter", "name": "adapter.safetensors", "url": ""}
    workflow = [node(1, "LoadMoGeModel", "moge.safetensors")]
    project = build("Depth", comfy, models=[model, adapter], workflow=workflow)
    assert project.status == ProjectStatus.READY and project.last_check["ok"]
    runtime.launch(project, timeout=30)
    try:
        listed = httpx.get(f"{project.url}models/geometry_estimation").json()
        controlnets = httpx.get(f"{project.url}models/controlnet").json()
    finally:
        runtime.stop(project)
    assert listed == ["moge.safetensors"] and controlnets == ["adapter.safetensors"]


def test_a_pack_whose_init_raises_ends_attention_and_check_again_makes_it_ready(comfy, tmp_path):
    broken = pack(tmp_path, "Broken-Nodes", BROKEN)
    project = build("Fragile", comfy, nodes=[broken], workflow=[node(1, "FakeSampler")])
    failed = [{"name": "Broken-Nodes", "error": "boom: the weights are missing"}]
    assert project.status == ProjectStatus.ATTENTION
    assert project.last_check["packs_failed"] == failed
    assert project.last_check["node_types_missing"] == ["FakeSampler"]
    printed = project.last_check["failure_lines"]["Broken-Nodes"]
    assert printed.startswith("Traceback") and "RuntimeError: boom" in printed
    code, report = check_json(project.slug)
    assert code == 1 and report["packs_failed"] == failed and not report["ok"]
    folder = project.comfyui_dir / "custom_nodes/Broken-Nodes"
    tools.checkout(folder, broken["commits"][1], project.install_log)  # the fix
    job = project.queue_job("project_check", dispatch=False)
    assert run_foreground(job.pk).status == Status.SUCCEEDED
    project.refresh_from_db()
    assert project.status == ProjectStatus.READY and project.last_check["packs_failed"] == []


def test_a_node_type_no_pack_provides_is_missing_and_a_skipped_model_is_not(comfy, tmp_path):
    fine = pack(tmp_path, "Fine-Nodes", WORKING, WORKING + "# two\n")
    model = {"directory": "checkpoints", "name": "gone.safetensors", "url": ""}
    workflow = [
        node(1, "CheckpointLoaderSimple", "gone.safetensors"),
        node(2, "FakeSampler"),
        node(3, "NoPackHasThisNode"),
        node(4, "Note", "just a note"),
    ]
    project = build(
        "Gaps", comfy, [fine], [model], workflow, skipped=["checkpoints/gone.safetensors"]
    )
    assert project.status == ProjectStatus.ATTENTION
    assert project.last_check["node_types_missing"] == ["NoPackHasThisNode"]
    assert project.last_check["models_missing"] == []


def test_a_model_comfyui_cannot_see_is_missing_under_its_key(comfy, folders):
    # A .gguf is never in ComfyUI's own lists (a pack reads it): the file on disk counts.
    model = {"directory": "clip", "name": "t5.safetensors", "url": ""}
    gguf = {"directory": "diffusion_models", "name": "flux-q4.gguf", "url": ""}
    for key in ("clip/t5.safetensors", "diffusion_models/flux-q4.gguf"):
        (folders / "models" / key).parent.mkdir(parents=True)
        (folders / "models" / key).write_bytes(b"weights")
    project = build("Clip", comfy, models=[model, gguf])
    assert project.status == ProjectStatus.READY  # legacy clip: read into text_encoders
    (folders / "models/clip/t5.safetensors").unlink()
    (folders / "models/diffusion_models/flux-q4.gguf").unlink()
    code, report = check_json(project.slug)
    assert code == 1
    assert report["models_missing"] == ["clip/t5.safetensors", "diffusion_models/flux-q4.gguf"]
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.ATTENTION


def test_relink_points_comfyui_at_the_models_folder_again_and_the_model_is_seen(comfy, folders):
    (folders / "models/loras").mkdir(parents=True)
    (folders / "models/loras/style.safetensors").write_bytes(b"weights")
    model = {"directory": "loras", "name": "style.safetensors", "url": ""}
    project = build("Relink", comfy, models=[model])
    (project.comfyui_dir / "extra_model_paths.yaml").write_text("")  # lost, say by hand
    assert check.check(project, timeout=30)["models_missing"] == ["loras/style.safetensors"]
    assert project.unseen_models() == [
        {"key": "loras/style.safetensors", "present": True, "url": ""}
    ]
    job = project.queue_job("project_check", dispatch=False, relink=True)
    assert run_foreground(job.pk).status == Status.SUCCEEDED
    project.refresh_from_db()
    assert project.last_check["ok"] and project.status == ProjectStatus.READY


def test_check_project_on_an_unknown_slug_exits_2():
    with pytest.raises(CommandError) as error:
        call_command("check_project", "nobody", "--json")
    assert error.value.returncode == 2


def test_check_project_on_a_project_never_installed_exits_2(comfy):
    project = install.create("Never", {"comfyui": comfy, "nodes": [], "models": []})
    Job.objects.filter(pk=project.install_job_id).update(status=Status.FAILED)
    with pytest.raises(CommandError) as error:
        call_command("check_project", project.slug)
    assert error.value.returncode == 2 and "no ComfyUI installed" in str(error.value)


def test_check_project_leaves_a_running_comfyui_running(comfy):
    project = runtime.launch(build("Running", comfy), timeout=30)
    pid = project.pid
    try:
        code, report = check_json(project.slug)
        assert code == 0 and report["ok"]
        project.refresh_from_db()
        assert project.run_state == RunState.RUNNING and project.pid == pid
        assert runtime.answers(project)
    finally:
        runtime.stop(project)


def test_check_project_stops_a_comfyui_it_started_for_the_check(comfy):
    project = build("Stopped", comfy)
    code, report = check_json(project.slug)
    assert code == 0 and report["ok"] and report["checked_at"]
    project.refresh_from_db()
    assert project.run_state == RunState.STOPPED and project.pid is None
    assert not runtime.answers(project)


def test_a_fresh_check_restarts_a_comfyui_that_runs_and_leaves_it_stopped(comfy):
    # The install's own check: a ComfyUI started before the install loaded stale packs.
    project = runtime.launch(build("Fresh", comfy), timeout=30)
    before = project.pid
    try:
        found = check.check(project, timeout=30, fresh=True)
    finally:
        runtime.stop(project)
    assert found["ok"] and project.run_log.read_text().count("To see the GUI") == 3
    assert not runtime.is_ours(Project(pid=before, port=project.port))


def test_a_check_queued_behind_a_launch_waits_for_it_and_one_during_an_install_is_refused(comfy):
    project = build("Queued", comfy)
    launch = project.queue_job("project_launch", dispatch=False)
    waiting = run_once(project.queue_job("project_check", dispatch=False).pk)
    assert waiting.status == Status.WAITING
    assert "Waiting for the launch of Queued" in waiting.error_message
    Job.objects.filter(pk=launch.pk).update(status=Status.CANCELLED)
    Job.objects.filter(pk=project.install_job_id).update(status=Status.RUNNING)
    refused = run_once(waiting.pk, now=timezone.now() + timedelta(seconds=5))
    assert refused.status == Status.FAILED and refused.error_category == Category.VALIDATION
    assert "is being installed" in refused.error_message
