"""Searches are jobs: the import page renders at once, without asking any remote source;
each missing model's search runs as a find_model job (here in-process, as the worker
would) and its candidates fill that model's live card."""

import hashlib
import json

import pytest
from django.db import connection

from comfyhub.library import searches
from comfyhub.live.page import render_cards
from comfyhub.projects.models import Project
from recovery.engine import run_foreground
from recovery.models import Category, Job, Status
from tests.conftest import free_port, watched_jobs
from tests.fakeapis import FakeHuggingFace

pytestmark = pytest.mark.django_db

DATA = b"ink weights " * 100
SHA = hashlib.sha256(DATA).hexdigest()


def loader(node_id: int, name: str) -> dict:
    return {"id": node_id, "type": "CheckpointLoaderSimple", "mode": 0, "widgets_values": [name]}


INK = {"nodes": [loader(1, "ink_mix_v2.safetensors")], "links": []}


@pytest.fixture(autouse=True)
def folders(project_dirs, settings):
    settings.FINDER_TIMEOUT = 2.0
    return project_dirs


@pytest.fixture
def hf(settings):
    with FakeHuggingFace() as server:
        settings.HF_ENDPOINT = server.base
        server.add_file("studio/ink-mix", "checkpoints/ink_mix_v2.safetensors", DATA)
        yield server


def imported(client, workflow=INK) -> tuple[str, int]:
    """The confirm page's URL and the search job of the first missing model."""
    response = client.post("/projects/import/", {"text": json.dumps(workflow)})
    assert response.status_code == 302, response.content.decode()
    confirm = response["Location"]
    token = confirm.rstrip("/").rsplit("/", 1)[-1]
    return confirm, client.session["project_imports"][token]["searches"][0]


def card(pk: int) -> tuple[str, bool]:
    """The search's live card as the page socket sends it, and whether the job ended (the
    socket then stops watching it)."""
    job = Job.objects.get(pk=pk)
    return render_cards([job], "")[0], job.is_terminal


def test_the_requirements_page_renders_without_asking_any_remote_source(client, hf, civitai):
    confirm, pk = imported(client)
    html = client.get(confirm).content.decode()
    assert hf.requests == [] and civitai.requests == []
    assert f"jobs={pk}" in html.split('ws-connect="/ws/page/?', 1)[1].split('"')[0]
    assert "starts as soon as a worker is free" in html
    assert f'name="model_{pk}" value="url"' in html and 'value="skip"' in html


def test_a_search_that_ends_while_the_page_renders_is_still_watched(client, hf):
    confirm, pk = imported(client)
    loaded = []

    def end_after_the_form_loads_it(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not loaded and sql.startswith("SELECT") and '"recovery_job"."id" IN' in sql:
            loaded.append(sql)  # the worker finishes the search right after this read
            Job.objects.filter(pk=pk).update(status=Status.SUCCEEDED)
        return result

    with connection.execute_wrapper(end_after_the_form_loads_it):
        html = client.get(confirm).content.decode()
    assert loaded and "starts as soon as a worker is free" in html
    assert watched_jobs(html) == {pk}


def test_importing_hands_one_search_per_missing_model_to_the_worker(client, dispatch, hf):
    two = {"nodes": [loader(1, "ink_mix_v2.safetensors"), loader(2, "b.safetensors")]}
    response, sent = dispatch(lambda: client.post("/projects/import/", {"text": json.dumps(two)}))
    assert response.status_code == 302 and sent == 2
    assert Job.objects.filter(kind=searches.KIND, status=Status.QUEUED).count() == 2


def test_the_search_job_fills_the_page_with_its_candidates_best_first(client, hf, civitai):
    confirm, pk = imported(client)
    assert run_foreground(pk).status == Status.SUCCEEDED
    html = client.get(confirm).content.decode()
    url = hf.url("/studio/ink-mix/resolve/main/checkpoints/ink_mix_v2.safetensors")
    assert url in html and "ink_mix_v2.safetensors · Hugging Face" in html
    assert f'name="model_{pk}" value="c0" id="id_model_{pk}_0" checked' in html
    assert pk not in watched_jobs(html)  # nothing left to wait for


def test_choosing_a_found_candidate_downloads_it_with_its_sha256(client, hf, civitai):
    confirm, pk = imported(client)
    run_foreground(pk)
    response = client.post(confirm, {"name": "Ink", f"model_{pk}": "c0"})
    assert response.status_code == 302
    model = Project.objects.get().spec["models"][0]
    assert model["url"].endswith("/ink_mix_v2.safetensors") and model["sha256"] == SHA


def test_a_candidate_picked_before_its_search_ended_is_refused_with_a_message(client, hf):
    confirm, pk = imported(client)
    response = client.post(confirm, {"name": "Ink", f"model_{pk}": "c0"})
    assert response.status_code == 400 and not Project.objects.exists()
    assert "is not among those found; choose again" in response.content.decode()


def test_a_second_import_of_the_same_model_joins_the_search_under_way(client, hf, civitai):
    _, first = imported(client)
    _, second = imported(client)
    assert first == second and Job.objects.filter(kind=searches.KIND).count() == 1


def test_a_recent_search_is_reused_without_asking_again(client, hf, civitai):
    _, first = imported(client)
    run_foreground(first)
    asked = len(hf.requests)
    confirm, second = imported(client)
    assert second == first and len(hf.requests) == asked
    assert "ink_mix_v2.safetensors · Hugging Face" in client.get(confirm).content.decode()


def test_a_search_older_than_the_finder_cache_is_done_again(client, hf, civitai, settings):
    _, first = imported(client)
    run_foreground(first)
    settings.FINDER_CACHE_SECONDS = 0
    assert imported(client)[1] != first


def test_another_link_given_with_the_same_model_is_another_search(client, hf):
    linked = json.loads(json.dumps(INK))
    given = {"name": "ink_mix_v2.safetensors", "url": "https://example.org/ink_mix_v2.safetensors"}
    linked["nodes"][0]["properties"] = {"models": [{**given, "directory": "checkpoints"}]}
    assert imported(client)[1] != imported(client, linked)[1]


def test_with_every_remote_source_down_the_search_fails_saying_why(client, remotes_down):
    confirm, pk = imported(client)
    job = run_foreground(pk)
    assert (job.status, job.error_category, job.attempt) == (Status.FAILED, Category.NETWORK, 1)
    html = client.get(confirm).content.decode()
    assert "The search failed. Nothing could be searched: Hugging Face:" in html
    assert "CivitAI:" in html and "Paste a link if you know one" in html


def test_after_a_failed_search_a_pasted_link_still_creates_the_project(client, remotes_down):
    confirm, pk = imported(client)
    run_foreground(pk)
    url = "https://example.org/ink_mix_v2.safetensors"
    response = client.post(confirm, {"name": "Ink", f"model_{pk}": "url", f"url_{pk}": url})
    assert response.status_code == 302
    assert Project.objects.get().spec["models"][0]["url"] == url


def test_a_failed_search_is_not_reused_importing_again_searches_again(client, remotes_down):
    _, first = imported(client)
    run_foreground(first)
    assert imported(client)[1] != first


def test_a_failed_search_does_not_raise_the_attention_banner(client, remotes_down):
    _, pk = imported(client)
    run_foreground(pk)
    assert b"need you" not in client.get("/").content
    Job.objects.create(kind="download", status=Status.FAILED, error_message="HTTP 401")
    assert b"1 job needs you" in client.get("/").content


def test_a_source_down_beside_one_that_answered_is_named_on_the_card(client, hf, settings):
    settings.CIVITAI_ENDPOINT = f"http://127.0.0.1:{free_port()}"
    confirm, pk = imported(client)
    assert run_foreground(pk).status == Status.SUCCEEDED
    html = client.get(confirm).content.decode()
    assert "ink_mix_v2.safetensors · Hugging Face" in html and "Not searched: CivitAI:" in html


def test_nothing_found_while_the_sources_answered_says_so_and_succeeds(client, hf, civitai):
    confirm, pk = imported(client, {"nodes": [loader(1, "zzz_unknown.safetensors")]})
    assert run_foreground(pk).status == Status.SUCCEEDED
    assert "No download was found for it" in client.get(confirm).content.decode()


def test_the_live_card_says_it_searches_with_a_refresh_link_then_brings_radios(hf, civitai):
    pk = searches.queue({"directory": "checkpoints", "name": "ink_mix_v2.safetensors"}).pk
    html, terminal = card(pk)
    assert not terminal and "Queued" in html and '<a href="">Refresh</a>' in html
    Job.objects.filter(pk=pk).update(status=Status.RUNNING)
    assert "Searching</span> the models folder" in card(pk)[0]
    Job.objects.filter(pk=pk).update(status=Status.QUEUED)
    run_foreground(pk)
    html, terminal = card(pk)
    assert terminal and f'id="job-{pk}"' in html and 'hx-swap-oob="true"' in html
    # Unchecked: a choice the user made meanwhile (a pasted link) must not be taken away.
    assert f'<input type="radio" name="model_{pk}" value="c0" id="id_model_{pk}_0">' in html


def test_a_name_the_finder_refuses_fails_its_search_with_the_reason(hf, civitai):
    pk = searches.queue({"directory": "checkpoints", "name": "../evil.safetensors"}).pk
    job = run_foreground(pk)
    assert (job.status, job.error_category) == (Status.FAILED, Category.VALIDATION)
    assert "may not contain '..'" in job.error_message and "may not contain" in card(pk)[0]


def test_an_import_kept_by_a_version_without_searches_is_gone_not_a_crash(client):
    session = client.session
    session["project_imports"] = {"old": {"name": "x", "missing": [], "candidates": []}}
    session.save()
    response = client.get("/projects/import/old/")
    assert response.status_code == 404
