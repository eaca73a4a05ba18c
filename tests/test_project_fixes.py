"""Findings that lead somewhere: a ComfyUI that does not start says why in one line, a
missing module is installed by the install itself, a dropped node type is brought back by
pinning its pack, and fix_project applies what needs no choice (stand-in ComfyUI, local
wheels, local git repos; the real ComfyUI's turn is tests/test_real_comfyui.py)."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from comfyhub.projects import install, runtime
from comfyhub.projects.models import Project, ProjectStatus
from recovery.engine import run_foreground
from recovery.models import Job
from tests.conftest import command_json
from tests.fakecomfy import MAIN_PY, make_repo
from tests.wheels import offline_index, write_wheel

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OLD = 'NODE_CLASS_MAPPINGS = {"OldSampler": object, "KeptNode": object}\n'
NEW = 'NODE_CLASS_MAPPINGS = {"KeptNode": object}\n'


@pytest.fixture(autouse=True)
def wheels(settings, tmp_path, monkeypatch, project_dirs):
    """An offline index: pip's seeds, PyYAML (module `yaml`) and `extra`."""
    settings.PORT_RANGE = (4500, 4599)
    folder = offline_index(tmp_path, monkeypatch)
    write_wheel(folder, "PyYAML", "6.0", module="yaml")
    write_wheel(folder, "extra", "1.0")
    return folder


def comfy_needing(tmp_path, *modules: str) -> dict:
    """A stand-in ComfyUI that imports `modules` first, after printing a page of noise."""
    noise = "print('Total VRAM 24576 MB, total RAM 24000 MB\\n' * 40)\n"
    imports = "".join(f"import {module}\n" for module in modules)
    path, commits = make_repo(
        tmp_path / "repos" / "ComfyUI",
        {"main.py": noise + imports + MAIN_PY, "requirements.txt": "", "nodes.py": ""},
        {"README.md": "fake\n"},
    )
    return {"repository": str(path), "commit": commits[0]}


def build(name: str, comfy: dict, nodes=(), workflow=(), files=()) -> Project:
    spec = {
        "comfyui": comfy,
        "nodes": list(nodes),
        "models": [],
        "files": list(files),
        "workflow": {"nodes": list(workflow), "links": []},
        "workflow_name": name,
    }
    project = install.create(name, spec)
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def fix_json(*args: str) -> tuple[int, dict]:
    return command_json("fix_project", *args)


def test_a_comfyui_that_exits_at_start_is_a_finding_led_by_its_exception_line(tmp_path):
    project = build("Broken", comfy_needing(tmp_path, "not_on_any_index"))
    error = project.last_check["comfyui_error"]
    assert project.status == ProjectStatus.ATTENTION
    assert error == {
        "message": "ModuleNotFoundError: No module named 'not_on_any_index'",
        "module": "not_on_any_index",
    }
    assert not project.last_check["fixes"]  # no index has it: nothing is offered


def test_the_install_installs_the_distribution_of_a_missing_module_and_ends_ready(tmp_path):
    project = build("Modules", comfy_needing(tmp_path, "yaml", "extra"))
    log = project.install_log.read_text()
    assert project.status == ProjectStatus.READY, project.last_check
    assert "Install PyYAML, which provides the module yaml" in log
    assert "round 2: Install extra, which provides the module extra" in log
    assert project.last_check["comfyui_error"] is None


def test_a_pack_failing_on_a_missing_module_is_offered_its_distribution(tmp_path):
    pack, commits = make_repo(
        tmp_path / "repos" / "needs-yaml", {"__init__.py": "import yaml\n"}, {"V": "2\n"}
    )
    node = {"repository": str(pack), "commit": commits[0]}
    project = build("Pack", comfy_needing(tmp_path), nodes=[node])
    # The install's check applied it: the pack imports and nothing is left to fix.
    assert project.status == ProjectStatus.READY, project.last_check
    assert "the pack needs-yaml does not import without it" in project.install_log.read_text()


def test_a_module_of_comfyui_itself_is_never_installed_from_the_index(tmp_path):
    pack, _ = make_repo(
        tmp_path / "repos" / "too-new", {"__init__.py": "import nodes.v4_api\n"}, {"V": "2\n"}
    )
    project = build("TooNew", comfy_needing(tmp_path), nodes=[{"repository": str(pack)}])
    assert project.status == ProjectStatus.ATTENTION
    assert project.last_check["packs_failed"][0]["name"] == "too-new"
    assert not [f for f in project.last_check["fixes"] if f["kind"] == "install_module"]


def test_a_node_type_the_pack_dropped_is_offered_as_a_pin_and_fix_project_applies_it(
    client, tmp_path
):
    pack, commits = make_repo(
        tmp_path / "repos" / "dropping", {"__init__.py": OLD}, {"__init__.py": NEW}
    )
    node = {"repository": str(pack), "commit": commits[-1], "node_types": ["OldSampler"]}
    workflow = [{"id": 1, "type": "OldSampler", "mode": 0, "widgets_values": []}]
    project = build("Old", comfy_needing(tmp_path), nodes=[node], workflow=workflow)
    [pin] = [fix for fix in project.last_check["fixes"] if fix["kind"] == "pin_pack"]
    assert pin["commit"] == commits[0] and pin["types"] == ["OldSampler"]
    page = client.get(f"/projects/{project.slug}/").content.decode()
    assert "Fix all</button>" in page and "Pin it</button>" in page
    assert f"Pin dropping to {commits[0][:12]}" in page
    code, report = fix_json(project.slug)
    assert code == 0 and report["status"] == "ready", report
    assert [fix["kind"] for fix in report["applied"]] == ["pin_pack"]
    assert Project.objects.get(pk=project.pk).restore_points.count() == 1


def test_fix_project_refuses_a_file_the_project_does_not_need(tmp_path):
    project = build("Plain", comfy_needing(tmp_path))
    with pytest.raises(CommandError, match=r"needs no file .input/nope\.png.") as refused:
        call_command("fix_project", project.slug, "--without", "input/nope.png")
    assert refused.value.returncode == 2
    assert Project.objects.get(pk=project.pk).models_skipped == []


def test_an_input_file_gone_without_is_no_longer_missing(tmp_path):
    files = [{"path": "input/cat.png", "url": "", "sources": []}]
    project = build("Inputs", comfy_needing(tmp_path), files=files)
    assert project.status == ProjectStatus.FAILED  # no link: the install stops at it
    code, report = fix_json(project.slug, "--without", "input/cat.png")
    assert code == 0 and report["check"]["inputs_missing"] == [], report
    assert report["status"] == "ready"


def test_the_fix_button_queues_one_fix_job_and_refuses_a_fix_not_offered(client, tmp_path):
    project = build("Page", comfy_needing(tmp_path, "not_on_any_index"))
    url = f"/projects/{project.slug}/fix/"
    assert client.get(url).status_code == 405
    refused = client.post(url, {"kind": "pin_pack", "target": "https://example.org/x"})
    assert refused.status_code == 400
    assert client.post(url).status_code == 302
    assert client.post(url).status_code == 302  # a double click joins the first
    assert Job.objects.filter(kind="project_fix").count() == 1


def test_the_page_leads_with_the_line_that_stopped_comfyui(client, tmp_path):
    project = build("Shown", comfy_needing(tmp_path, "not_on_any_index"))
    page = client.get(f"/projects/{project.slug}/").content.decode()
    assert "ComfyUI does not start: <code>ModuleNotFoundError: No module named" in page
    assert "Total VRAM" not in page.split("ComfyUI does not start")[1].split("</li>")[0]


def test_the_exit_cause_is_the_last_tracebacks_exception_line(tmp_path, settings):
    project = Project(name="x", slug="x")
    project.run_log.write_text(
        "Traceback (most recent call last):\n  File 'a.py'\nValueError: first\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n  File 'main.py', line 1\n    import cv2\n"
        "ModuleNotFoundError: No module named 'cv2.gapi'\nshutting down\n"
    )
    assert runtime.exit_cause(project) == {
        "message": "ModuleNotFoundError: No module named 'cv2.gapi'",
        "module": "cv2.gapi",
    }


def test_a_module_whose_distribution_is_installed_already_is_not_offered_again(tmp_path):
    project = build("Half", comfy_needing(tmp_path, "extra.missing_part"))
    error = project.last_check["comfyui_error"]
    assert project.status == ProjectStatus.ATTENTION
    assert error["module"] == "extra.missing_part"  # `extra` came in round 1
    assert project.last_check["fixes"] == []


def test_a_pin_that_loses_another_type_is_a_choice_applied_by_its_own_button(client, tmp_path):
    only_a = 'NODE_CLASS_MAPPINGS = {"TypeA": object}\n'
    only_b = 'NODE_CLASS_MAPPINGS = {"TypeB": object}\n'
    pack, commits = make_repo(
        tmp_path / "repos" / "split", {"__init__.py": only_a}, {"__init__.py": only_b}
    )
    node = {"repository": str(pack), "commit": commits[1], "node_types": ["TypeA", "TypeB"]}
    workflow = [{"id": 1, "type": "TypeA", "mode": 0}, {"id": 2, "type": "TypeB", "mode": 0}]
    project = build("Split", comfy_needing(tmp_path), nodes=[node], workflow=workflow)
    [pin] = [fix for fix in project.last_check["fixes"] if fix["kind"] == "pin_pack"]
    assert pin["commit"] == commits[0] and not pin["auto"]  # a choice: TypeB goes
    assert pin["detail"].endswith("it lacks TypeB, which this workflow also uses.")
    fields = {"kind": "pin_pack", "target": str(pack), "commit": commits[0]}
    assert client.post(f"/projects/{project.slug}/fix/", fields).status_code == 302
    run_foreground(Job.objects.get(kind="project_fix").pk)
    project.refresh_from_db()
    assert project.node_pins[0]["commit"] == commits[0]
    assert project.last_check["node_types_missing"] == ["TypeB"]


def test_fix_all_on_a_project_whose_install_job_was_pruned_never_installs_again(client, tmp_path):
    project = build("Pruned", comfy_needing(tmp_path))
    mine = project.comfyui_dir / "output" / "my_render.png"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_bytes(b"the user's picture")
    project.install_job.delete()  # pruned after the retention: install_job is NULL
    assert client.post(f"/projects/{project.slug}/fix/").status_code == 302
    assert not Job.objects.filter(kind="project_install").exists()
    assert mine.read_bytes() == b"the user's picture"


def test_fix_project_ends_with_a_plain_error_when_the_install_is_paused(tmp_path):
    project = build("Paused", comfy_needing(tmp_path))
    Job.objects.filter(pk=project.install_job_id).update(status="paused")
    code, report = fix_json(project.slug)
    assert code == 1
    assert "is paused; resume it" in report["check"]["error"]["message"]


def test_a_packs_own_module_is_never_installed_from_the_index(wheels, tmp_path):
    write_wheel(wheels, "utils", "1.0")  # a real name on PyPI, unrelated to the pack
    pack, _ = make_repo(
        tmp_path / "repos" / "own-utils",
        {"__init__.py": "import utils\n", "utils.py": "X = 1\n"},
        {"V": "2\n"},
    )
    project = build("OwnUtils", comfy_needing(tmp_path), nodes=[{"repository": str(pack)}])
    assert project.status == ProjectStatus.ATTENTION
    assert "No module named 'utils'" in project.last_check["packs_failed"][0]["error"]
    assert project.last_check["fixes"] == []


def test_fix_all_does_not_join_a_fix_of_one_pin_under_way(client, tmp_path):
    project = build("Two", comfy_needing(tmp_path))
    only = {"kind": "pin_pack", "target": "x", "commit": ""}
    project.queue_job("project_fix", dispatch=False, only=only)
    assert client.post(f"/projects/{project.slug}/fix/").status_code == 302
    assert Job.objects.filter(kind="project_fix").count() == 2


def test_a_pin_to_a_commit_the_packs_clone_lacks_is_fetched_from_the_mirror(tmp_path):
    from comfyhub.projects import mirrors
    from tests.fakecomfy import commit_files

    pack, commits = make_repo(
        tmp_path / "repos" / "comeback", {"__init__.py": OLD}, {"__init__.py": NEW}
    )
    node = {"repository": str(pack), "commit": commits[1], "node_types": ["OldSampler"]}
    workflow = [{"id": 1, "type": "OldSampler", "mode": 0}]
    project = build("Comeback", comfy_needing(tmp_path), nodes=[node], workflow=workflow)
    back = commit_files(pack, {"__init__.py": OLD}, "OldSampler is back")
    commit_files(pack, {"__init__.py": NEW}, "and gone again")
    mirrors.ensure(str(pack), back, project.install_log)  # another project fetched it
    with pytest.raises(SystemExit):  # still attention; its pin is now the newer commit
        call_command("check_project", project.slug, stdout=StringIO())
    code, report = fix_json(project.slug)
    assert code == 0, report
    assert Project.objects.get(pk=project.pk).node_pins[0]["commit"] == back


def test_go_without_an_input_on_the_page_finishes_the_install(client, tmp_path):
    files = [{"path": "input/cat.png", "url": "", "sources": []}]
    project = build("Cat", comfy_needing(tmp_path), files=files)
    fields = {"kind": "go_without", "target": "input/cat.png"}
    assert client.post(f"/projects/{project.slug}/fix/", fields).status_code == 302
    run_foreground(project.install_job_id)  # Retry queued it; the worker's part, here
    run_foreground(Job.objects.get(kind="project_fix").pk)
    project.refresh_from_db()
    assert project.models_skipped == ["input/cat.png"]
    assert project.status == ProjectStatus.READY, project.last_check
