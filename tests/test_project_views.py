"""The projects pages: list, new from a template, import, the project page and its actions."""

import json
import re
import subprocess
import sys

import pytest
from django.test import Client

from comfyhub.library.models import Download
from comfyhub.live.page import render_cards
from comfyhub.projects import install
from comfyhub.projects.models import (
    Project,
    ProjectStatus,
    RestorePoint,
    RunState,
)
from comfyhub.workflows import catalog
from recovery.engine import run_foreground
from recovery.errors import JobError
from recovery.models import Category, Job, Status
from tests.conftest import ROOT, free_port, watched_jobs
from tests.fileserver import FileServer
from tests.projectpages import MODEL, SPEC, csrf_client, make

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def folders(pages_dir):
    return pages_dir


WORKFLOW = {
    "nodes": [
        {
            "id": 1,
            "type": "CheckpointLoaderSimple",
            "mode": 0,
            "widgets_values": ["dreamy_v1.safetensors"],
        }
    ],
    "links": [],
}


# --- Projects ---------------------------------------------------------------------------


def test_the_empty_list_says_what_to_do_next(client):
    html = client.get("/").content.decode()
    assert "No projects yet" in html
    assert 'href="/projects/new/"' in html and 'href="/projects/import/"' in html


def test_an_installing_project_shows_its_live_install_card(client):
    project = make()
    html = client.get("/").content.decode()
    assert project.name in html and "Installing" in html
    assert watched_jobs(html) == {project.install_job_id}
    assert f'id="job-{project.install_job_id}"' in html and "Get ComfyUI" in html


def test_a_ready_project_offers_launch(client):
    project = make(status=ProjectStatus.READY)
    html = client.get("/").content.decode()
    assert f'action="/projects/{project.slug}/launch/"' in html


def test_the_list_refuses_post(client):
    assert client.post("/").status_code == 405


# --- New from a template ------------------------------------------------------------------


def a_template_with_models() -> catalog.Template:
    return next(t for group in catalog.catalog() for t in group.templates if t.models and t.size)


def test_the_gallery_shows_templates_by_category_with_their_models_and_size(client):
    template = a_template_with_models()
    html = client.get("/projects/new/", {"q": template.name}).content.decode()
    assert template.title in html and template.category in html
    assert f"{template.models[0].directory}/{template.models[0].name}" in html
    assert "in all" in html and 'name="template"' in html


def test_the_search_filters_server_side(client):
    template = a_template_with_models()
    other = next(t for t in catalog.catalog()[0].templates if t.name != template.name)
    html = client.get("/projects/new/", {"q": template.name}).content.decode()
    assert f'value="{template.name}"' in html and f'value="{other.name}"' not in html
    nothing = client.get("/projects/new/", {"q": "zzzz-no-such-template"}).content.decode()
    assert "No template matches" in nothing


def test_an_htmx_search_gets_only_the_gallery(client):
    response = client.get("/projects/new/", {"q": "flux"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200 and html.startswith('<section id="gallery"')


def test_an_unknown_category_is_refused_with_a_message(client):
    response = client.get("/projects/new/", {"category": "Nope"})
    assert response.status_code == 400 and b"Select a valid choice" in response.content


def test_create_from_a_template_queues_the_install_and_lands_on_the_project(client, dispatch):
    template = a_template_with_models()
    data = {"template": template.name, "name": "My Flux"}
    response, sent = dispatch(lambda: client.post("/projects/new/", data))
    project = Project.objects.get()
    assert response.status_code == 302 and response["Location"] == "/projects/my-flux/"
    assert project.spec["workflow_name"] == project.spec["template"] == template.name
    # The install, and each missing model's download started right away.
    downloads = Download.objects.count()
    assert downloads and project.install_job.status == Status.QUEUED and sent == 1 + downloads


def test_a_10000_character_name_is_refused_at_once_saying_the_limit(client):
    data = {"template": a_template_with_models().name, "name": "x" * 10_000}
    response = client.post("/projects/new/", data)
    assert response.status_code == 400
    assert b"A project name is at most 100 characters (this one has 10000)" in response.content
    assert not Project.objects.exists() and not Download.objects.exists()


def test_an_unknown_template_is_refused_with_a_message(client):
    response = client.post("/projects/new/", {"template": "no_such", "name": "X"})
    assert response.status_code == 400 and b"There is no template named" in response.content
    assert not Project.objects.exists()


def test_creating_without_csrf_is_refused():
    response = csrf_client().post("/projects/new/", {"template": "x", "name": "X"})
    assert response.status_code == 403


def test_the_gallery_refuses_put(client):
    assert client.put("/projects/new/").status_code == 405


def test_a_project_named_new_gets_another_slug(client):
    assert make("New").slug != "new" and make("import").slug != "import"


# --- Import ----------------------------------------------------------------------------


def import_pasted(client, workflow=WORKFLOW) -> str:
    response = client.post("/projects/import/", {"text": json.dumps(workflow)})
    assert response.status_code == 302, response.content.decode()
    return response["Location"]


def search_of(client, confirm: str, i: int = 0) -> int:
    """The pk of the search job of the import's i-th missing model (it names its fields)."""
    return client.session["project_imports"][confirm.rstrip("/").rsplit("/", 1)[-1]]["searches"][i]


def test_the_import_page_offers_file_paste_and_link(client):
    html = client.get("/projects/import/").content.decode()
    assert 'type="file"' in html and "<textarea" in html and 'name="url"' in html


def test_a_pasted_workflow_lists_its_missing_model(client):
    html = client.get(import_pasted(client)).content.decode()
    assert "checkpoints/dreamy_v1.safetensors" in html and "is missing" in html
    assert 'value="url"' in html and 'value="skip"' in html


def test_confirming_with_a_link_creates_the_project_with_that_link(client, dispatch):
    confirm = import_pasted(client)
    url, pk = "https://example.org/dreamy_v1.safetensors", search_of(client, confirm)
    data = {"name": "Dreamy", f"model_{pk}": "url", f"url_{pk}": url}
    response, sent = dispatch(lambda: client.post(confirm, data))
    project = Project.objects.get()
    assert response.status_code == 302 and response["Location"] == "/projects/dreamy/"
    assert project.spec["models"][0]["url"] == url and project.models_skipped == []
    assert sent == 2 and Download.objects.get().dest == "checkpoints/dreamy_v1.safetensors"
    assert client.get(confirm).status_code == 404  # the import is used up


def test_going_without_a_model_records_it_as_skipped(client):
    confirm = import_pasted(client)
    client.post(confirm, {"name": "Lean", f"model_{search_of(client, confirm)}": "skip"})
    project = Project.objects.get()
    assert project.models_skipped == ["checkpoints/dreamy_v1.safetensors"]


def test_a_launcher_json_keeps_its_pins_and_a_chosen_candidate_becomes_the_link(client):
    with open(ROOT / "tests/data/workflows/launcher.json", "rb") as upload:
        confirm = client.post("/projects/import/", {"file": upload})["Location"]
    state = client.session["project_imports"][confirm.rstrip("/").rsplit("/", 1)[-1]]
    for pk in state["searches"]:
        run_foreground(pk)
    client.post(confirm, {"name": "Portraits", **{f"model_{pk}": "c0" for pk in state["searches"]}})
    project = Project.objects.get()
    first = Job.objects.get(pk=state["searches"][0]).checkpoint_data["candidates"][0]
    assert first["url"] in [m["url"] for m in project.spec["models"]]
    assert project.spec["comfyui"]["commit"] == "0a6a6b8ee0bb28ef1f0d3e9ee00cf5e4e4d8d2f1"


def test_choosing_a_link_without_pasting_one_says_so(client):
    confirm = import_pasted(client)
    pk = search_of(client, confirm)
    response = client.post(confirm, {"name": "X", f"model_{pk}": "url", f"url_{pk}": ""})
    assert response.status_code == 400 and b"Paste the link" in response.content
    assert not Project.objects.exists()


def test_a_model_already_in_the_folder_is_ticked(client, folders):
    (folders / "models" / "checkpoints").mkdir()
    (folders / "models" / "checkpoints" / "dreamy_v1.safetensors").write_bytes(b"x")
    html = client.get(import_pasted(client)).content.decode()
    assert "✓" in html and "is missing" not in html


def test_an_uploaded_file_is_imported_and_named_after_it(client, tmp_path):
    path = tmp_path / "portrait.json"
    path.write_text(json.dumps(WORKFLOW))
    with path.open("rb") as upload:
        response = client.post("/projects/import/", {"file": upload})
    assert b'value="portrait"' in client.get(response["Location"]).content


def test_a_workflow_behind_a_link_is_fetched():
    with FileServer() as files:
        url = files.add("/shared/flow.json", json.dumps(WORKFLOW).encode())
        response = Client().post("/projects/import/", {"url": url})
        assert response.status_code == 302
        missing = files.url("/nothing.json")
        refused = Client().post("/projects/import/", {"url": missing})
    assert refused.status_code == 400 and b"HTTP 404" in refused.content


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"text": "{not json"}, b"not valid JSON"),
        ({"text": '{"a": 1}'}, b"not a ComfyUI workflow"),
        ({"url": "file:///etc/passwd"}, b"Only http"),
        ({}, b"Give one workflow"),
    ],
)
def test_bad_input_gets_the_form_again_with_a_plain_error(client, data, message):
    response = client.post("/projects/import/", data)
    assert response.status_code == 400 and message in response.content


def test_an_unknown_import_is_404(client):
    assert client.get("/projects/import/nope/").status_code == 404


def test_import_refuses_put_and_posts_without_csrf(client):
    assert client.put("/projects/import/").status_code == 405
    assert csrf_client().post("/projects/import/", {"text": "{}"}).status_code == 403
    confirm = import_pasted(client)
    assert client.put(confirm).status_code == 405


# --- The project page ---------------------------------------------------------------------


def test_a_failed_step_shows_its_category_message_detail_and_retry(client):
    project = make(status=ProjectStatus.FAILED)
    Job.objects.filter(pk=project.install_job_id).update(
        status=Status.FAILED,
        checkpoint_data={"steps": ["clone_comfyui"], "current": "create_venv"},
        error_category="dependency",
        error_message="python3 -m venv is missing: install python3-venv.",
        error_detail="CalledProcessError: exit 1",
    )
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'data-state="done"' in html and 'data-state="failed"' in html
    assert "Dependency:" in html and "install python3-venv" in html
    assert "CalledProcessError: exit 1" in html
    assert f'action="/projects/{project.slug}/retry/"' in html


def test_retry_queues_the_failed_install_again(client, dispatch):
    project = make(status=ProjectStatus.FAILED)
    Job.objects.filter(pk=project.install_job_id).update(status=Status.FAILED)
    response, sent = dispatch(lambda: client.post(f"/projects/{project.slug}/retry/"))
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.slug}/"
    assert Job.objects.get(pk=project.install_job_id).status == Status.QUEUED and sent == 1


def test_retry_after_the_install_record_was_pruned_starts_a_new_install(client, dispatch):
    project = make(status=ProjectStatus.FAILED)
    Job.objects.filter(pk=project.install_job_id).delete()
    assert b"Install again" in client.get(f"/projects/{project.slug}/").content
    _, sent = dispatch(lambda: client.post(f"/projects/{project.slug}/retry/"))
    project.refresh_from_db()
    assert project.install_job.kind == "project_install" and sent == 1


def test_the_page_shows_the_projects_downloads_live(client):
    project = make()
    download, _ = Download.objects.request(MODEL["url"], "checkpoints/a.safetensors")
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert download.job_id in watched_jobs(html)
    assert f'id="job-{download.job_id}"' in html


def test_the_log_fragment_gives_the_last_lines_escaped(client):
    project = make()
    project.install_log.write_text("".join(f"line {n}\n" for n in range(150)) + "<b>\n")
    html = client.get(f"/projects/{project.slug}/log/", {"log": "install"}).content.decode()
    assert "line 149" in html and "line 50\n" not in html and "&lt;b&gt;" in html
    response = client.get(f"/projects/{project.slug}/log/", {"log": "../../etc/passwd"})
    assert response.status_code == 400 and b"?log=install" in response.content


def test_the_page_polls_both_logs(client):
    project = make()
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert f'hx-get="/projects/{project.slug}/log/?log=comfyui"' in html
    assert 'hx-trigger="every 2s"' in html


def test_an_unknown_project_is_404(client):
    assert client.get("/projects/nope/").status_code == 404
    assert client.post("/projects/nope/launch/").status_code == 404


def test_launch_queues_one_launch_job_and_goes_back(client, dispatch):
    project = make(status=ProjectStatus.READY)
    url = f"/projects/{project.slug}/launch/"
    response, sent = dispatch(lambda: client.post(url, {"next": "/"}))
    _, again = dispatch(lambda: client.post(url))
    job = Job.objects.get(kind="project_launch")
    assert response.status_code == 302 and response["Location"] == "/"
    assert job.params == {"project": project.pk} and (sent, again) == (1, 0)
    assert watched_jobs(client.get("/").content.decode()) == {job.pk}


def test_launching_a_project_not_installed_says_why(client):
    project = make()
    response = client.post(f"/projects/{project.slug}/launch/")
    assert response.status_code == 400 and b"not installed" in response.content
    assert not Job.objects.filter(kind="project_launch").exists()


def test_a_launch_job_of_a_project_not_installed_fails_with_the_reason():
    project = make()
    job = Job.objects.create(kind="project_launch", params={"project": project.pk})
    job = run_foreground(job.pk)
    assert job.status == Status.FAILED and job.error_category == "validation"
    assert "not installed yet" in job.error_message


@pytest.fixture
def comfyui_lookalike():
    """A process whose command line reads like a project's ComfyUI (main.py + port)."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "main.py", str(port)],
        start_new_session=True,
    )
    yield child, port
    child.kill()
    child.wait()


def test_a_running_project_offers_open_and_stop_and_stop_stops_it(client, comfyui_lookalike):
    child, port = comfyui_lookalike
    project = make(status=ProjectStatus.READY, run_state=RunState.RUNNING, pid=child.pid, port=port)
    html = client.get("/").content.decode()
    assert f'href="http://127.0.0.1:{port}/"' in html and "/stop/" in html
    response = client.post(f"/projects/{project.slug}/stop/")
    assert response.status_code == 302 and child.wait(timeout=15) is not None
    assert Project.objects.get().run_state == RunState.STOPPED


def test_export_downloads_a_launcher_json(client):
    project = make(status=ProjectStatus.READY)
    response = client.get(f"/projects/{project.slug}/export/")
    assert response["Content-Disposition"] == 'attachment; filename="demo.launcher.json"'
    assert response.json()["format"] == "comfyui_launcher"
    assert response.json()["files"][0][0]["download_url"] == MODEL["url"]


def test_rollback_needs_confirmation_then_queues_a_job(client, dispatch):
    project = make(status=ProjectStatus.READY)
    point = RestorePoint.objects.create(project=project, reason="adding x", comfyui_commit="a" * 40)
    url = f"/projects/{project.slug}/rollback/"
    refused = client.post(url, {"point": point.pk})
    assert refused.status_code == 400 and b"Tick the box" in refused.content
    _, sent = dispatch(lambda: client.post(url, {"point": point.pk, "confirm": "on"}))
    job = Job.objects.get(kind="project_rollback")
    assert job.params == {"project": project.pk, "point": point.pk} and sent == 1


def test_rollback_to_another_projects_point_is_refused(client):
    project, other = make(status=ProjectStatus.READY), make("Other")
    point = RestorePoint.objects.create(project=other, reason="x", comfyui_commit="a" * 40)
    response = client.post(
        f"/projects/{project.slug}/rollback/", {"point": point.pk, "confirm": "on"}
    )
    assert response.status_code == 400 and b"does not exist" in response.content


def test_delete_needs_confirmation_and_keeps_shared_models(client, folders):
    project = make(status=ProjectStatus.READY)
    project.install_log.write_text("x")
    shared = folders / "models" / "checkpoints" / "a.safetensors"
    shared.parent.mkdir()
    shared.write_bytes(b"model")
    refused = client.post(f"/projects/{project.slug}/delete/")
    assert refused.status_code == 400 and b"Tick the box" in refused.content
    response = client.post(f"/projects/{project.slug}/delete/", {"confirm": "on"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Project.objects.exists() and not project.folder.exists() and shared.exists()
    assert Job.objects.get(pk=project.install_job_id).status == Status.CANCELLED


@pytest.mark.parametrize(
    "action",
    [
        "launch",
        "stop",
        "retry",
        "rollback",
        "delete",
        "models/skip",
        "models/download",
        "check",
        "nodes/add",
    ],
)
def test_actions_refuse_get_and_posts_without_csrf(client, action):
    project = make(status=ProjectStatus.READY)
    assert client.get(f"/projects/{project.slug}/{action}/").status_code == 405
    assert csrf_client().post(f"/projects/{project.slug}/{action}/").status_code == 403
    assert Project.objects.filter(pk=project.pk).exists()


@pytest.mark.parametrize("page", ["", "export/", "log/?log=install"])
def test_read_only_pages_refuse_post(client, page):
    project = make()
    assert client.post(f"/projects/{project.slug}/{page}").status_code == 405


def live_card(pk: int, csrf_token: str = "") -> str:
    """The fragment the page socket sends for the job's card."""
    return render_cards([Job.objects.get(pk=pk)], csrf_token)[0]


def test_the_live_install_card_renders_steps_for_the_socket():
    project = make()
    Job.objects.filter(pk=project.install_job_id).update(
        status=Status.RUNNING,
        checkpoint_data={"steps": ["clone_comfyui"], "current": "create_venv"},
    )
    html = live_card(project.install_job_id, "t" * 32)
    assert f'id="job-{project.install_job_id}" class="job install' in html
    assert 'hx-swap-oob="true"' in html
    assert 'data-state="current"' in html and "Create the Python environment" in html


def test_the_live_launch_card_says_it_is_starting_then_offers_launch_again():
    project = make(status=ProjectStatus.READY)
    job = Job.objects.create(kind="project_launch", params={"project": project.pk})
    assert "waiting for the worker to start ComfyUI" in live_card(job.pk)
    Job.objects.filter(pk=job.pk).update(status=Status.FAILED, error_message="exited with 1")
    html = live_card(job.pk)
    assert "Launch failed:" in html and "Launch again" in html


# --- A cancelled model download ----------------------------------------------------------

KEY = "checkpoints/a.safetensors"


def cancelled(status: str = Status.FAILED) -> Project:
    """A project whose install stopped (`status`) after its model's download was cancelled."""
    project = make(status=ProjectStatus.FAILED)
    Download.objects.get().job.cancel()
    Job.objects.filter(pk=project.install_job_id).update(status=status)
    return project


def test_a_cancelled_download_is_shown_with_its_two_ways_forward(client):
    project = cancelled()
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert "download cancelled" in html and f'value="{KEY}"' in html
    assert f'action="/projects/{project.slug}/models/download/"' in html
    assert f'action="/projects/{project.slug}/models/skip/"' in html
    # Retry would stop at the same model again: the card points at the choice instead.
    assert f'action="/projects/{project.slug}/retry/"' not in html and "Choose for" in html


def test_going_without_a_cancelled_model_records_it_and_resumes_the_install(client, dispatch):
    project = cancelled()
    url = f"/projects/{project.slug}/models/skip/"
    response, sent = dispatch(lambda: client.post(url, {"model": KEY}))
    project.refresh_from_db()
    assert response.status_code == 302 and project.models_skipped == [KEY]
    assert project.install_job.status == Status.QUEUED and sent == 1
    assert project.status == ProjectStatus.INSTALLING and not project.cancelled_models()


def test_downloading_a_cancelled_model_again_queues_it_and_resumes_the_install(client, dispatch):
    project = cancelled()
    url = f"/projects/{project.slug}/models/download/"
    response, sent = dispatch(lambda: client.post(url, {"model": KEY}))
    newest = Download.objects.order_by("id").last()
    assert response.status_code == 302 and Download.objects.count() == 2
    assert newest.dest == KEY and newest.job.status == Status.QUEUED and sent == 2
    assert Job.objects.get(pk=project.install_job_id).status == Status.QUEUED


def test_a_model_the_project_does_not_need_is_refused(client):
    project = cancelled()
    response = client.post(f"/projects/{project.slug}/models/skip/", {"model": "../etc/passwd"})
    assert response.status_code == 400 and b"needs no model ../etc/passwd" in response.content
    assert Project.objects.get().models_skipped == []


def test_a_model_without_a_link_can_only_be_gone_without(client):
    project = install.create("Linkless", {**SPEC, "models": [{**MODEL, "url": ""}]})
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert "/models/skip/" in html and "/models/download/" not in html
    response = client.post(f"/projects/{project.slug}/models/download/", {"model": KEY})
    assert response.status_code == 400 and b"No download link is known" in response.content


def test_the_models_step_never_restarts_a_download_the_user_cancelled():
    model = {**MODEL, "url": f"http://127.0.0.1:{free_port()}/a.safetensors"}
    project = install.create("Held", {**SPEC, "models": [model]})
    Download.objects.get().job.cancel()
    with pytest.raises(JobError) as error:
        install.models(project, project.install_job)
    assert error.value.category == Category.NOT_FOUND
    assert f"You cancelled the download of {KEY}" in error.value.message
    assert Download.objects.count() == 1


def test_a_cancelled_install_leaves_the_project_failed_not_installing():
    project = make()
    project.install_job.cancel()
    assert Project.objects.get().status == ProjectStatus.FAILED


@pytest.mark.parametrize("status", [Status.FAILED, Status.WAITING, Status.PAUSED, Status.CANCELLED])
def test_every_retry_the_install_card_shows_runs_the_install_again(client, dispatch, status):
    # Cancelled relies on Job.retry_now taking cancelled jobs (the recovery branch).
    project = make(status=ProjectStatus.FAILED)
    Job.objects.filter(pk=project.install_job_id).update(status=status)
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert f'action="/projects/{project.slug}/retry/"' in html
    _, sent = dispatch(lambda: client.post(f"/projects/{project.slug}/retry/"))
    assert Job.objects.get(pk=project.install_job_id).status == Status.QUEUED and sent == 1


def test_the_live_install_card_carries_the_header_status_badge(client):
    project = make()
    badge = f'id="project-status-{project.pk}"'
    assert badge in client.get(f"/projects/{project.slug}/").content.decode()
    # The job's row is written first; the badge must not wait for the project's to follow.
    Job.objects.filter(pk=project.install_job_id).update(status=Status.SUCCEEDED)
    html = live_card(project.install_job_id)
    sent = re.search(rf"<span {badge}[^>]*>([^<]*)</span>", html)
    assert sent and 'hx-swap-oob="true"' in sent.group(0) and sent.group(1) == "Ready"
