"""The finder learns from imported files ("known") and reads later search pages."""

import hashlib
import io
import json

import pytest
from django.core.management import call_command

from comfyhub.library import finder, knowledge
from comfyhub.library.models import KnownModel
from comfyhub.workflows.analyze import ModelRequirement
from recovery.engine import run_foreground
from tests.fakeapis import FakeHuggingFace

pytestmark = pytest.mark.django_db

DATA = b"gouache weights " * 64
SHA = hashlib.sha256(DATA).hexdigest()
LINK = "https://files.example/gouache/gouache_v3.safetensors"
MIRROR = "https://mirror.example/gouache_v3.safetensors"


@pytest.fixture(autouse=True)
def isolated(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.MODELS_DIR = tmp_path / "models"
    settings.HF_TOKEN = settings.CIVITAI_API_TOKEN = ""
    settings.FINDER_TIMEOUT = 2.0


@pytest.fixture
def hf(settings):
    with FakeHuggingFace() as server:
        settings.HF_ENDPOINT = server.base
        yield server


def workflow(url: str = LINK, sha256: str = SHA) -> dict:
    model = {"name": "gouache_v3.safetensors", "url": url, "directory": "loras"}
    model.update({"hash": sha256, "hash_type": "SHA256"} if sha256 else {})
    node = {
        "id": 1,
        "type": "LoraLoader",
        "mode": 0,
        "widgets_values": ["gouache_v3.safetensors", 1, 1],
        "properties": {"models": [model]},
    }
    return {"nodes": [node], "links": [], "version": 0.4}


def launcher() -> dict:
    dest = "models/checkpoints/oil_paint.safetensors"
    files = [
        {"dest_relative_path": dest, "download_url": url, "sha256_checksum": SHA, "size": 1024}
        for url in ("https://a.example/oil_paint.safetensors", "https://b.example/oil.bin")
    ]
    return {"name": "Oil", "workflow_json": {"nodes": [], "links": []}, "files": [files]}


def known(**filters) -> list[tuple]:
    rows = KnownModel.objects.filter(**filters).order_by("url")
    return [(r.directory, r.name, r.url, r.sha256, r.size, r.origin) for r in rows]


def test_an_imported_workflow_teaches_the_finder_which_answers_with_no_network(
    client, remotes_down
):
    posted = client.post("/projects/import/", {"text": json.dumps(workflow())})
    assert posted.status_code == 302
    result = finder.find("Gouache_V3.safetensors", "loras")
    best = result.candidates[0]
    assert (best.source, best.url, best.sha256, best.directory) == ("known", LINK, SHA, "loras")
    assert best.score == 60 + 10 and best.label == "declared by workflow pasted JSON"
    assert result.sources["known"] == "ok"
    assert result.sources["huggingface"].startswith("unavailable: Could not connect")


def test_the_import_page_names_the_uploaded_file_as_the_origin(client, remotes_down):
    upload = io.BytesIO(json.dumps(workflow()).encode())
    upload.name = "paintings.json"
    client.post("/projects/import/", {"file": upload})
    assert known() == [
        ("loras", "gouache_v3.safetensors", LINK, SHA, None, "workflow paintings.json")
    ]


def test_the_import_page_offers_what_an_earlier_import_declared(client, remotes_down):
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", MIRROR)], "workflow a")
    confirm = client.post("/projects/import/", {"text": json.dumps(workflow())})["Location"]
    for search in client.session["project_imports"][confirm.rstrip("/").rsplit("/", 1)[-1]][
        "searches"
    ]:
        run_foreground(search)
    html = client.get(confirm).content.decode()
    assert LINK in html and MIRROR in html and "a file imported before" in html


def test_the_admin_lists_known_models_read_only(admin_client):
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", LINK, SHA)], "workflow a")
    listing = admin_client.get("/admin/library/knownmodel/", {"q": "gouache"})
    assert listing.status_code == 200 and LINK in listing.content.decode()
    assert admin_client.get("/admin/library/knownmodel/add/").status_code == 403


def test_a_known_file_is_found_by_sha256_under_another_name(remotes_down):
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", LINK, SHA)], "workflow a")
    best = finder.find("renamed.safetensors", sha256=SHA).candidates[0]
    assert (best.source, best.url, best.score) == ("known", LINK, 100)


def test_a_normalised_name_matches_but_another_file_does_not(remotes_down):
    knowledge.learn(
        [ModelRequirement("loras", "styles/gouache_v3.safetensors", LINK)], "workflow a"
    )
    assert [c.score for c in finder.find("Gouache-V3.ckpt").candidates] == [50]
    assert finder.find("gouache_v2.safetensors").candidates == []


def test_a_launchers_alternatives_are_all_learnt_with_size_and_hash(settings, tmp_path):
    (tmp_path / "oil.launcher.json").write_text(json.dumps(launcher()))
    call_command("analyze_workflow", str(tmp_path / "oil.launcher.json"), stdout=io.StringIO())
    origin = "launcher oil.launcher.json"
    assert known() == [
        (
            "checkpoints",
            "oil_paint.safetensors",
            "https://a.example/oil_paint.safetensors",
            SHA,
            1024,
            origin,
        ),
        ("checkpoints", "oil_paint.safetensors", "https://b.example/oil.bin", SHA, 1024, origin),
    ]


def test_links_that_are_not_http_and_malformed_hashes_are_not_learnt():
    models = [
        ModelRequirement("loras", "a.safetensors", "ftp://files.example/a.safetensors"),
        ModelRequirement("loras", "b.safetensors", "", SHA),
        ModelRequirement("loras", "c.safetensors", "https://files.example/c", "abc123"),
        ModelRequirement("loras", "d.safetensors", "https://files.example/d", SHA, "md5"),
        ModelRequirement("loras", "e" * 400 + ".safetensors", "https://files.example/e"),
    ]
    assert knowledge.learn(models, "workflow bad.json") == 1
    assert known() == [
        ("loras", "d.safetensors", "https://files.example/d", "", None, "workflow bad.json")
    ]


def test_a_link_declared_again_keeps_one_row_and_what_it_knew(remotes_down):
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", LINK, SHA)], "workflow a")
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", LINK)], "workflow b")
    assert known() == [("loras", "gouache_v3.safetensors", LINK, SHA, None, "workflow b")]


def test_a_hugging_face_page_link_is_learnt_as_its_file(hf):
    page = hf.url("/org/gouache/blob/main/gouache_v3.safetensors")
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", page)], "workflow a")
    assert KnownModel.objects.get().url == hf.url(
        "/org/gouache/resolve/main/gouache_v3.safetensors"
    )


def test_the_given_link_keeps_its_points_when_it_is_also_known(remotes_down):
    knowledge.learn([ModelRequirement("loras", "gouache_v3.safetensors", LINK, SHA)], "workflow a")
    result = finder.find("gouache_v3.safetensors", "loras", url=LINK)
    assert [(c.source, c.url, c.sha256, c.score) for c in result.candidates] == [
        ("url", LINK, SHA, 60 + 10 + 40)
    ]


def test_analyze_workflow_teaches_the_finder_too(tmp_path, remotes_down):
    (tmp_path / "flow.json").write_text(json.dumps(workflow(url=MIRROR, sha256="")))
    call_command("analyze_workflow", str(tmp_path / "flow.json"), "--json", stdout=io.StringIO())
    best = finder.find("gouache_v3.safetensors").candidates[0]
    assert (best.source, best.url, best.label) == (
        "known",
        MIRROR,
        "declared by workflow flow.json",
    )


# --- Later pages ----------------------------------------------------------------------------


def hf_repos(hf, count: int, holder: int) -> None:
    """`count` repos named watercolor-N, most downloaded first; only repo `holder` has the file."""
    for n in range(count):
        repo = f"org/watercolor-{n}"
        hf.add_repo(repo, downloads=1000 - n)
        name = "watercolor.safetensors" if n == holder else f"other_{n}.safetensors"
        hf.add_file(repo, name, DATA)


def searches(server, path: str) -> list[dict]:
    return [r for r in server.requests if r["path"] == path]


def test_a_hugging_face_match_on_page_2_is_found_when_page_1_has_none(hf, civitai):
    hf_repos(hf, 6, holder=5)  # pages of 4 repos: the file is on page 2
    best = finder.find("watercolor.safetensors").candidates[0]
    assert (best.source, best.label, best.score) == ("huggingface", "org/watercolor-5", 60)
    pages = searches(hf, "/api/models")
    assert len(pages) == 2 and "cursor=" in pages[1]["query"]


def test_page_2_of_hugging_face_is_not_asked_when_page_1_matches(hf, civitai):
    hf_repos(hf, 6, holder=2)
    best = finder.find("watercolor.safetensors").candidates[0]
    assert best.label == "org/watercolor-2"
    assert len(searches(hf, "/api/models")) == 1


def test_hugging_face_pages_stop_after_a_few(hf, civitai):
    hf_repos(hf, 20, holder=19)
    found = finder.find("watercolor.safetensors").candidates
    assert "watercolor.safetensors" not in [c.filename for c in found]
    assert len(searches(hf, "/api/models")) == 3  # SEARCH_PAGES


def test_later_pages_come_from_the_cache_the_next_time(hf, civitai):
    hf_repos(hf, 6, holder=5)
    first = finder.find("watercolor.safetensors")
    asked = len(hf.requests)
    assert finder.find("watercolor.safetensors") == first
    assert len(hf.requests) == asked


def civitai_models(civitai, count: int, holder: int) -> None:
    for n in range(1, count + 1):
        name = "pastel.safetensors" if n == holder else f"pastel_{n}.safetensors"
        civitai.add_version(
            n, n * 10, "v1", "http://cdn.invalid", SHA, len(DATA), name, model_name=f"Pastel {n}"
        )


def test_a_civitai_match_on_page_2_is_found_when_page_1_has_none(hf, civitai):
    civitai_models(civitai, 12, holder=12)  # pages of 10 models
    best = finder.find("pastel.safetensors").candidates[0]
    assert (best.source, best.url, best.score) == ("civitai", civitai.download_url(120), 60)
    pages = searches(civitai, "/api/v1/models")
    assert (
        len(pages) == 2 and "cursor=11" in pages[1]["query"] and "query=pastel" in pages[1]["query"]
    )


def test_page_2_of_civitai_is_not_asked_when_page_1_matches(hf, civitai):
    civitai_models(civitai, 12, holder=3)
    assert finder.find("pastel.safetensors").candidates[0].url == civitai.download_url(30)
    assert len(searches(civitai, "/api/v1/models")) == 1


def test_a_next_page_on_another_site_is_not_followed(hf, civitai, monkeypatch):
    hf_repos(hf, 6, holder=5)
    monkeypatch.setattr(hf, "url", lambda path: "http://elsewhere.invalid/" + path.lstrip("/"))
    result = finder.find("watercolor.safetensors")
    assert result.sources["huggingface"] == "ok"
    assert len(searches(hf, "/api/models")) == 1


def test_create_project_from_a_launcher_teaches_the_finder_even_when_the_install_fails(
    settings, project_dirs, remotes_down
):
    settings.COMFYUI_REPO = str(project_dirs / "no-such-repo")
    (project_dirs / "oil.json").write_text(json.dumps(launcher()))
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command(
            "create_project", "Oil", "--launcher", str(project_dirs / "oil.json"), stdout=out
        )
    best = finder.find("oil_paint.safetensors", "checkpoints").candidates[0]
    assert (best.source, best.url, best.size) == (
        "known",
        "https://a.example/oil_paint.safetensors",
        1024,
    )
    assert best.label == "declared by launcher oil.json"
