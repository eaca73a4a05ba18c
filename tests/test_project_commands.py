"""create_project / launch_project / stop_project / export_project, end to end."""

import hashlib
import json
import os
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from comfyhub.projects.models import Project
from comfyhub.workflows import templates
from comfyhub.workflows.analyze import required_models
from comfyhub.workflows.parse import from_json
from tests.fakecomfy import comfyui_repo, node_repo
from tests.fileserver import FileServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def setup(settings, project_dirs, tmp_path):
    settings.PORT_RANGE = (4900, 4999)
    settings.COMFYUI_REPO = str(comfyui_repo(tmp_path / "repos")[0])
    return tmp_path


def run(*args: str) -> dict:
    out = StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def checkpoint_workflow(url: str, sha256: str) -> dict:
    model = {
        "name": "tiny.safetensors",
        "url": url,
        "hash": sha256,
        "hash_type": "SHA256",
        "directory": "checkpoints",
    }
    node = {
        "id": 1,
        "type": "CheckpointLoaderSimple",
        "mode": 0,
        "widgets_values": ["tiny.safetensors"],
        "properties": {"models": [model]},
    }
    return {"nodes": [node], "links": [], "version": 0.4}


def test_a_workflow_becomes_a_ready_project_that_launches_and_stops(setup):
    data = os.urandom(200_000)
    with FileServer() as files:
        workflow = checkpoint_workflow(
            files.add("/tiny.safetensors", data), hashlib.sha256(data).hexdigest()
        )
        (setup / "wf.json").write_text(json.dumps(workflow))
        created = run("create_project", "Tiny Flow", "--workflow", str(setup / "wf.json"))
    check = created.pop("check")
    assert created == {"status": "ready", "slug": "tiny-flow", "error": None}
    assert check["ok"] and check["models_missing"] == [] and check["packs_failed"] == []
    assert (setup / "models/checkpoints/tiny.safetensors").read_bytes() == data
    launched = run("launch_project", "tiny-flow")
    assert launched["status"] == "running" and launched["url"].endswith(f":{launched['port']}/")
    assert run("stop_project", "tiny-flow") == {"status": "stopped", "slug": "tiny-flow"}
    assert Project.objects.get(slug="tiny-flow").run_state == "stopped"


def test_an_official_template_installs_when_its_models_are_set_aside(setup, monkeypatch):
    core = setup / "core-types.txt"  # the stand-in ComfyUI knows every core type they use
    core.write_text("\n".join(templates.node_types()))
    monkeypatch.setenv("FAKE_COMFY_CORE_TYPES", str(core))
    name = next(n for n in templates.names() if n.startswith("image_") and "api" not in n)
    wanted = required_models(from_json(templates.load_template(name)))
    without = [arg for m in wanted for arg in ("--without", f"{m.directory}/{m.name}")]
    created = run("create_project", "From Template", "--template", name, *without)
    assert created["status"] == "ready"
    assert Project.objects.get(slug=created["slug"]).models_skipped


def test_export_then_create_from_launcher_rebuilds_the_same_pins(setup):
    node, commits = node_repo(setup / "repos")
    launcher = {
        "format": "comfyui_launcher",
        "workflow_json": {"nodes": [], "links": []},
        "snapshot_json": {
            "comfyui": "",
            "git_custom_nodes": {str(node): {"hash": commits[0], "disabled": False}},
        },
        "files": [],
    }
    (setup / "in.json").write_text(json.dumps(launcher))
    first = run("create_project", "First", "--launcher", str(setup / "in.json"))
    out = StringIO()
    call_command("export_project", first["slug"], stdout=out)
    (setup / "out.json").write_text(out.getvalue())
    second = run("create_project", "Second", "--launcher", str(setup / "out.json"))
    pins = [Project.objects.get(slug=s["slug"]).node_pins for s in (first, second)]
    assert (
        second["status"] == "ready" and pins[0][0]["commit"] == pins[1][0]["commit"] == commits[0]
    )
    exported = json.loads(out.getvalue())
    assert exported["format"] == "comfyui_launcher"
    assert exported["snapshot_json"]["git_custom_nodes"][str(node)]["hash"] == commits[0]


def test_a_missing_or_invalid_file_exits_2(setup):
    (setup / "bad.json").write_text('{"hello": 1}')
    for source in (str(setup / "nope.json"), str(setup / "bad.json")):
        with pytest.raises(CommandError) as error:
            call_command("create_project", "X", "--workflow", source)
        assert error.value.returncode == 2
    assert not Project.objects.exists()


def test_an_unknown_project_or_template_exits_2():
    for args in (["launch_project", "nope"], ["create_project", "X", "--template", "nope"]):
        with pytest.raises(CommandError) as error:
            call_command(*args)
        assert error.value.returncode == 2


def test_a_name_of_10000_characters_exits_2_before_anything_is_installed(setup):
    (setup / "wf.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(CommandError) as error:
        call_command("create_project", "x" * 10_000, "--workflow", str(setup / "wf.json"))
    assert error.value.returncode == 2
    assert "at most 100 characters (this one has 10000)" in str(error.value)
    assert not Project.objects.exists()


def test_stop_and_export_answer_in_json():
    Project.objects.create(name="Idle", slug="idle", spec={"models": []})
    assert run("stop_project", "idle") == {"status": "stopped", "slug": "idle"}
    assert run("export_project", "idle")["format"] == "comfyui_launcher"


def test_export_to_a_file_reports_where_in_json(setup):
    Project.objects.create(name="Idle", slug="idle", spec={"models": []})
    report = run("export_project", "idle", "--output", str(setup / "idle.json"))
    assert report == {"status": "ok", "slug": "idle", "path": str(setup / "idle.json")}
    assert json.loads((setup / "idle.json").read_text())["format"] == "comfyui_launcher"


def test_a_launch_that_fails_answers_in_json_and_exits_1():
    Project.objects.create(name="Half", slug="half")  # still installing
    out = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("launch_project", "half", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert exit_.value.code == 1 and report["status"] == "stopped"
    assert report["error"]["category"] == "validation"
    assert "not installed yet" in report["error"]["message"]
