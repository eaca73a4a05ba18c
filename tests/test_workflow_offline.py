"""Without ComfyUI-Manager's data (package hidden, site unreachable) the analysis degrades:
every model is still reported, custom-node resolution says "unavailable: <why>", and the
site is asked once per run behind its breaker, not once per workflow."""

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from comfyhub.projects import specs
from comfyhub.workflows import analyze, nodemap, parse, templates
from recovery.models import BreakerState, CircuitBreaker
from tests.conftest import ROOT, free_port, subprocess_env
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = "ComfyUI-Manager's node list could not be fetched: could not connect to 127.0.0.1"
CUSTOM = {
    "nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["dreamy.safetensors"]},
        {"id": 2, "type": "IPAdapterAdvanced", "widgets_values": []},
        {"id": 3, "type": "ForkNode", "properties": {"aux_id": "someone/fork"}},
    ],
    "links": [],
}


@pytest.fixture
def offline(settings, tmp_path, monkeypatch):
    """Package hidden, site on a closed port, and this process's node map not loaded yet."""
    settings.DATA_DIR = tmp_path
    settings.MODELS_DIR = tmp_path / "models"
    settings.MANAGER_DATA_PACKAGE = False
    settings.MANAGER_DATA_URL = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setattr(nodemap._Current, "node_map", None)
    monkeypatch.setattr(nodemap._Current, "expires", 0.0)
    return settings


@pytest.fixture
def dropping(offline):
    """The site accepts each connection for the node map and drops it before the body."""
    with FileServer() as site:
        site.add(nodemap.MAP_FILE, b"{}", script=["drop:0"] * 100)
        site.add(nodemap.LIST_FILE, b"{}")
        site.add(nodemap.STATS_FILE, b"{}")
        offline.MANAGER_DATA_URL = site.url("/")
        yield site


def analyze_offline(tmp_path, url: str, *paths) -> subprocess.CompletedProcess:
    env = subprocess_env(tmp_path, COMFYHUB_MANAGER_DATA_PACKAGE="0", COMFYHUB_MANAGER_DATA_URL=url)
    command = [sys.executable, str(ROOT / "manage.py"), "analyze_workflow", "--json", *paths]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def custom_workflow(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(CUSTOM))
    return str(path)


def test_offline_every_template_is_reported_with_its_models_and_node_resolution_unavailable(
    tmp_path,
):
    paths = [str(templates.path(name)) for name in templates.names()]
    closed = f"http://127.0.0.1:{free_port()}/"
    done = analyze_offline(tmp_path, closed, *paths, custom_workflow(tmp_path))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr
    assert [line["file"] for line in lines[:-1]] == paths
    expected = [[m.name for m in analyze.required_models(parse.read(p))] for p in paths]
    assert [[m["name"] for m in line["models"]] for line in lines[:-1]] == expected
    assert all(line["error"] is None for line in lines)
    assert all(line["custom_nodes_unavailable"].startswith(REFUSED) for line in lines)
    assert "(connection refused)" in lines[0]["custom_nodes_unavailable"]


def test_offline_a_custom_node_workflow_keeps_its_models_and_the_packs_its_nodes_name(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/"
    done = analyze_offline(tmp_path, closed, custom_workflow(tmp_path))
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert [m["name"] for m in line["models"]] == ["dreamy.safetensors"]
    assert [p["repository"] for p in line["custom_nodes"]] == ["https://github.com/someone/fork"]
    assert line["unknown_node_types"] == ["IPAdapterAdvanced"]


def test_offline_a_run_asks_the_site_once_not_once_per_workflow(tmp_path, dropping):
    paths = [str(templates.path(name)) for name in templates.names()[:5]]
    done = analyze_offline(tmp_path, dropping.url("/"), *paths, custom_workflow(tmp_path))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 6
    assert [r["path"] for r in dropping.requests] == [f"/{nodemap.MAP_FILE}"]
    assert CircuitBreaker.objects.get(key=nodemap.BREAKER).consecutive_failures == 1


def test_an_open_breaker_spares_even_the_one_attempt(dropping):
    CircuitBreaker.objects.create(
        key=nodemap.BREAKER,
        state=BreakerState.OPEN,
        opened_at=timezone.now(),
        cooldown_seconds=600,
    )
    found = nodemap.default()
    assert dropping.requests == []
    assert "failed repeatedly; next try after" in found.unavailable


def test_a_server_process_asks_again_after_a_while_and_then_resolves_custom_nodes(dropping):
    dropping.add(nodemap.MAP_FILE, b"{}", script=["drop:0"])
    assert nodemap.default(clock=lambda: 0.0).unavailable
    assert nodemap.default(clock=lambda: nodemap.RETRY_SECONDS - 1).unavailable
    assert len(dropping.requests) == 1
    assert nodemap.default(clock=lambda: nodemap.RETRY_SECONDS).unavailable == ""
    assert len(dropping.requests) == 4  # the map, the list and the stars


def test_the_summary_says_custom_node_resolution_is_unavailable_and_why(offline, tmp_path):
    out = StringIO()
    call_command("analyze_workflow", custom_workflow(tmp_path), stdout=out)
    text = out.getvalue()
    assert "[missing] checkpoints/dreamy.safetensors" in text
    assert f"  custom nodes: unavailable: {REFUSED}" in text


def test_offline_a_project_spec_still_lists_every_model(offline):
    spec = specs.from_workflow(CUSTOM, "custom")
    assert [m["name"] for m in spec["models"]] == ["dreamy.safetensors"]
    assert spec["unknown_node_types"] == ["IPAdapterAdvanced"]


def test_offline_the_import_page_still_lists_the_missing_model(offline, client):
    offline.HF_ENDPOINT = offline.CIVITAI_ENDPOINT = offline.MANAGER_DATA_URL
    response = client.post("/projects/import/", {"text": json.dumps(CUSTOM)})
    assert response.status_code == 302, response.content.decode()
    html = client.get(response["Location"]).content.decode()
    assert "checkpoints/dreamy.safetensors" in html and "IPAdapterAdvanced" in html


def test_offline_the_import_page_says_node_lookup_is_unavailable_and_why(offline, client):
    offline.HF_ENDPOINT = offline.CIVITAI_ENDPOINT = offline.MANAGER_DATA_URL
    response = client.post("/projects/import/", {"text": json.dumps(CUSTOM)})
    html = client.get(response["Location"]).content.decode()
    assert "could not be looked up: ComfyUI-Manager" in html and "connection refused" in html
