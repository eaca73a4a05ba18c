"""The import page shows why each pack was chosen and lets the user pick another provider."""

import json

import pytest

from comfyhub.projects import specs
from comfyhub.projects.models import Project

pytestmark = pytest.mark.django_db

TWRI = "https://github.com/twri/sdxl_prompt_styler"
ART_VENTURE = "https://github.com/sipherxyz/comfyui-art-venture"
STYLED = {
    "nodes": [
        {"id": 1, "type": "SDXLPromptStyler", "widgets_values": []},
        {"id": 2, "type": "IPAdapterModelLoader", "widgets_values": []},
    ],
    "links": [],
}


@pytest.fixture(autouse=True)
def folders(project_dirs):
    return project_dirs


def imported(client) -> str:
    response = client.post("/projects/import/", {"text": json.dumps(STYLED)})
    assert response.status_code == 302, response.content.decode()
    return response["Location"]


def test_the_page_shows_each_packs_reason_and_a_choice_of_provider(client):
    html = client.get(imported(client)).content.decode()
    assert "most starred of 3 providers" in html
    assert "ComfyUI-Manager prefers it for this node" in html
    assert 'name="node_0"' in html and f'<option value="{ART_VENTURE}">' in html
    assert 'name="node_1"' not in html  # one provider: nothing to choose


def test_picking_another_provider_replaces_the_pack_in_the_spec(client):
    response = client.post(imported(client), {"name": "Styled", "node_0": ART_VENTURE})
    assert response.status_code == 302
    nodes = {n["repository"]: n for n in Project.objects.get().spec["nodes"]}
    assert TWRI not in nodes
    assert nodes[ART_VENTURE]["node_types"] == ["SDXLPromptStyler"]
    assert nodes[ART_VENTURE]["reason"] == specs.PICKED


def test_keeping_the_chosen_provider_keeps_the_pack_and_its_reason(client):
    client.post(imported(client), {"name": "Styled", "node_0": TWRI})
    nodes = {n["repository"]: n for n in Project.objects.get().spec["nodes"]}
    assert nodes[TWRI]["reason"] == "most starred of 3 providers"
    assert ART_VENTURE not in nodes


def test_a_forged_provider_is_refused_and_nothing_is_created(client):
    forged = "https://evil.example/owner/pack"
    response = client.post(imported(client), {"name": "Styled", "node_0": forged})
    assert response.status_code == 400
    assert "does not provide SDXLPromptStyler" in response.content.decode()
    assert not Project.objects.exists()


def test_a_pick_leaves_a_snapshot_pack_that_provided_nothing_in_place():
    spec = {
        "nodes": [
            {"repository": "https://x/extra", "node_types": [], "reason": "listed"},
            {"repository": TWRI, "node_types": ["SDXLPromptStyler"], "reason": "first listed"},
        ]
    }
    picked = specs.with_picks(spec, {"SDXLPromptStyler": ART_VENTURE})
    assert [n["repository"] for n in picked["nodes"]] == ["https://x/extra", ART_VENTURE]
