"""The project page as ComfyUI sees it: the check's findings with their fixes, Check
again, Install it, the statuses they lead to and their live cards."""

import subprocess
import sys

import pytest

from comfyhub.library.models import Download
from comfyhub.live.page import render_cards
from comfyhub.projects import check, runtime
from comfyhub.projects.models import Project, ProjectStatus, RunState, follow_install_job
from recovery.models import Job, Status
from tests.conftest import watched_jobs
from tests.projectpages import make

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def folders(pages_dir):
    return pages_dir


FOUND = {
    "ok": False,
    "node_types_missing": ["FancyNode", "LonelyNode"],
    "models_missing": ["checkpoints/a.safetensors"],
    "packs_failed": [{"name": "Broken-Pack", "error": "No module named 'cv2'"}],
    "providers": {"FancyNode": "https://github.com/someone/fancy-nodes"},
    "checked_at": "2026-01-02T03:04:05+00:00",
}


def installed(folders, **fields) -> Project:
    """A project whose ComfyUI is on disk and whose install job ended."""
    project = make(status=ProjectStatus.ATTENTION, **fields)
    Job.objects.filter(pk=project.install_job_id).update(status=Status.SUCCEEDED)
    (project.comfyui_dir).mkdir(parents=True)
    (project.comfyui_dir / "main.py").write_text("")
    (project.venv / "bin").mkdir(parents=True)
    return Project.objects.get(pk=project.pk)


def test_a_get_of_a_project_whose_comfyui_died_shows_it_crashed_and_writes_nothing(client):
    dead = subprocess.Popen([sys.executable, "-c", "pass", "main.py", "4999"])
    dead.wait()
    project = make(status=ProjectStatus.READY, run_state=RunState.RUNNING, pid=dead.pid, port=4999)
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'data-run="crashed"' in html and "stopped unexpectedly" in html
    row = Project.objects.get(pk=project.pk)
    assert (row.run_state, row.pid, row.updated_at) == (
        RunState.RUNNING,
        dead.pid,
        project.updated_at,
    )
    runtime.watch()  # the worker's tick records it
    assert Project.objects.get(pk=project.pk).run_state == RunState.CRASHED


def test_the_findings_are_shown_in_plain_words_with_a_fix_for_each(client, folders):
    project = installed(folders, last_check=FOUND)
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert (
        "Needs attention" in html and "does not know the node type <code>FancyNode</code>" in html
    )
    assert 'name="node_type" value="FancyNode"' in html and "Install it" in html
    assert 'value="LonelyNode"' not in html and "No known pack provides it" in html
    assert "cannot see the model <code>checkpoints/a.safetensors</code>" in html
    assert "failed to import: No module named &#x27;cv2&#x27;" in html
    assert f"/projects/{project.slug}/log/?log=comfyui" in html and "Check again" in html


def test_a_missing_node_whose_pack_is_installed_points_to_the_log_not_to_install_it(
    client, folders
):
    pin = {"repository": FOUND["providers"]["FancyNode"], "name": "fancy-nodes", "commit": "a"}
    project = installed(folders, last_check=FOUND, node_pins=[pin])
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'value="FancyNode"' not in html and "is installed but did not load it" in html


def test_check_again_queues_one_check_job(client, dispatch, folders):
    project = installed(folders)
    url = f"/projects/{project.slug}/check/"
    response, sent = dispatch(lambda: client.post(url))
    _, again = dispatch(lambda: client.post(url))
    job = Job.objects.get(kind="project_check")
    assert response.status_code == 302 and (sent, again) == (1, 0)
    assert job.pk in watched_jobs(client.get(f"/projects/{project.slug}/").content.decode())


def test_check_again_of_a_project_not_installed_says_why(client):
    project = make(status=ProjectStatus.FAILED)
    Job.objects.filter(pk=project.install_job_id).update(status=Status.FAILED)
    response = client.post(f"/projects/{project.slug}/check/")
    assert response.status_code == 400 and b"no ComfyUI installed" in response.content
    assert not Job.objects.filter(kind="project_check").exists()


def test_install_it_queues_the_pack_the_check_named_and_refuses_any_other(client, folders):
    project = installed(folders, last_check=FOUND)
    url = f"/projects/{project.slug}/nodes/add/"
    for node_type in ("LonelyNode", "NotMissingAtAll"):
        assert client.post(url, {"node_type": node_type}).status_code == 400
    assert not Job.objects.filter(kind="project_add_node").exists()
    assert client.post(url, {"node_type": "FancyNode"}).status_code == 302
    job = Job.objects.get(kind="project_add_node")
    assert job.params == {"project": project.pk, "repository": FOUND["providers"]["FancyNode"]}


def test_an_attention_project_can_be_launched(client, dispatch, folders):
    project = installed(folders, last_check=FOUND)
    response, sent = dispatch(lambda: client.post(f"/projects/{project.slug}/launch/"))
    assert response.status_code == 302 and sent == 1


def test_a_finished_install_is_ready_or_needs_attention_as_its_check_found():
    project = make(last_check=FOUND)
    job = Job.objects.get(pk=project.install_job_id)
    Job.objects.filter(pk=job.pk).update(status=Status.SUCCEEDED)
    follow_install_job(None, Job.objects.get(pk=job.pk))
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.ATTENTION
    Project.objects.filter(pk=project.pk).update(last_check={**FOUND, "ok": True})
    follow_install_job(None, Job.objects.get(pk=job.pk))
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.READY


def test_the_project_page_shows_a_registry_pack_at_its_version(client):
    project = make(status=ProjectStatus.READY)
    pin = {"repository": "", "name": "fake-pack", "commit": "", "cnr_id": "fake-pack"}
    project.touch(node_pins=[{**pin, "version": "1.2.0"}])
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert "fake-pack <code>1.2.0</code> <small>(Comfy Registry)</small>" in html


def live_card(pk: int) -> str:
    """The fragment the page socket sends for the job's card."""
    return render_cards([Job.objects.get(pk=pk)], "")[0]


def test_the_live_cards_of_a_check_and_a_pack_addition_say_what_runs_and_refresh_the_findings(
    folders,
):
    project = installed(folders, last_check=FOUND)
    check = project.queue_job("project_check", dispatch=False)
    adding = project.queue_job("project_add_node", dispatch=False, repository="https://x/pack")
    Job.objects.filter(pk=check.pk).update(status=Status.RUNNING)
    assert "Asking ComfyUI what it sees" in live_card(check.pk)
    assert "<h3>Adding <code>https://x/pack</code></h3>" in live_card(adding.pk)
    Job.objects.filter(pk=check.pk).update(status=Status.SUCCEEDED)
    done = live_card(check.pk)
    assert "ComfyUI was asked" in done and f'id="findings-{project.pk}"' in done


def test_a_model_comfyui_cannot_see_offers_a_download_or_a_relink_when_the_file_is_there(
    client, folders, settings
):
    project = installed(folders, last_check=FOUND)
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'name="model" value="checkpoints/a.safetensors"' in html and "Download it" in html
    assert "Relink and check again" not in html
    (settings.MODELS_DIR / "checkpoints").mkdir(parents=True, exist_ok=True)
    (settings.MODELS_DIR / "checkpoints" / "a.safetensors").write_bytes(b"weights")
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'name="relink" value="1"' in html and "Relink and check again" in html
    assert 'value="checkpoints/a.safetensors"' not in html.split('id="models-h"')[0]


def test_download_it_queues_the_model_the_check_missed(client, dispatch, folders):
    project = installed(folders, last_check=FOUND)
    data = {"model": "checkpoints/a.safetensors"}
    response, _ = dispatch(lambda: client.post(f"/projects/{project.slug}/models/download/", data))
    assert response.status_code == 302
    assert Download.objects.get().dest == "checkpoints/a.safetensors"


def test_relink_queues_a_check_that_points_comfyui_at_the_models_again(client, dispatch, folders):
    project = installed(folders, last_check=FOUND)
    url = f"/projects/{project.slug}/check/"
    response, sent = dispatch(lambda: client.post(url, {"relink": "1"}))
    job = Job.objects.get(kind="project_check")
    assert response.status_code == 302 and sent == 1
    assert job.params == {"project": project.pk, "relink": True}


def test_relink_asked_while_a_plain_check_runs_is_queued_after_it(client, dispatch, folders):
    project = installed(folders, last_check=FOUND)
    running = project.queue_job("project_check", dispatch=False)
    Job.objects.filter(pk=running.pk).update(status=Status.RUNNING)
    url = f"/projects/{project.slug}/check/"
    response, sent = dispatch(lambda: client.post(url, {"relink": "1"}))
    _, again = dispatch(lambda: client.post(url, {"relink": "1"}))
    _, plain = dispatch(lambda: client.post(url))
    checks = list(Job.objects.filter(kind="project_check").order_by("pk"))
    assert response.status_code == 302 and (sent, again, plain) == (1, 0, 0)
    assert [job.params.get("relink") for job in checks] == [None, True]
    assert project.older_runtime_job(checks[1]) == checks[0]  # it waits for the first


def test_a_failed_pack_shows_the_lines_comfyui_printed_for_it(client, folders):
    lines = 'Traceback (most recent call last):\n  File "x"\nModuleNotFoundError: cv2'
    found = {**FOUND, "failure_lines": {"Broken-Pack": lines}}
    project = installed(folders, last_check=found)
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert "What ComfyUI printed" in html and "ModuleNotFoundError: cv2</pre>" in html


def test_the_failure_lines_are_the_traceback_before_each_cannot_import_line():
    lines = [
        "Traceback (most recent call last):",
        "  an older, unrelated failure",
        "Starting server",
        "Traceback (most recent call last):",
        '  File "/p/custom_nodes/Broken/__init__.py", line 1',
        "RuntimeError: boom",
        "Cannot import /p/custom_nodes/Broken module for custom nodes: boom",
        "Cannot import /p/custom_nodes/Quiet module for custom nodes: no traceback",
    ]
    found = check.failure_lines(lines)
    assert found["Broken"] == "\n".join(lines[3:7])
    assert found["Quiet"] == lines[7]
