"""The model finder against loopback fakes of Hugging Face and CivitAI (real response
shapes), the installed ComfyUI-Manager model list and a real models folder."""

import hashlib
import importlib.util
import io
import json
import os
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from comfyhub.library import finder, finder_sources, index, manager_data
from comfyhub.library.models import FinderAnswer
from recovery.models import CircuitBreaker
from tests.conftest import manage
from tests.fakeapis import FakeCivitai, FakeHuggingFace, FakeManagerData

pytestmark = pytest.mark.django_db

DATA = b"ink weights " * 100
SHA = hashlib.sha256(DATA).hexdigest()
INK_VAE = {
    "name": "Ink VAE",
    "type": "VAE",
    "base": "SDXL",
    "save_path": "default",
    "filename": "ink_vae.safetensors",
    "url": "https://files.invalid/ink_vae.safetensors",
    "size": "1MB",
}


@pytest.fixture(autouse=True)
def isolated(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.MODELS_DIR = tmp_path / "models"
    settings.HF_TOKEN = settings.CIVITAI_API_TOKEN = ""
    settings.FINDER_TIMEOUT = 2.0
    settings.RECOVERY_BREAKER_THRESHOLD = 2


# Both fakes always run, so no test can reach the real sites.
@pytest.fixture(autouse=True)
def hf(settings):
    with FakeHuggingFace() as server:
        settings.HF_ENDPOINT = server.base
        yield server


@pytest.fixture(autouse=True)
def civitai(settings):
    with FakeCivitai() as server:
        settings.CIVITAI_ENDPOINT = server.base
        yield server


def put(root: Path, relative: str, data: bytes = DATA) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def on_civitai(server, model_id: int, filename: str, model_name: str) -> None:
    """A LORA whose one version holds `filename` (with DATA's hash; never downloaded here)."""
    cdn = f"http://cdn.invalid/{model_id}"
    version = (model_id, model_id * 10, "v1", cdn, SHA, len(DATA), filename)
    server.add_version(*version, model_name=model_name, model_type="LORA")


def summary(result) -> list[tuple]:
    return [(c.source, c.directory, c.filename, c.score) for c in result.candidates]


def test_a_hugging_face_file_comes_with_its_url_size_sha256_and_folder(hf):
    hf.add_file("studio/ink-mix", "split_files/checkpoints/ink_mix_v2.safetensors", DATA)
    best = finder.find("ink_mix_v2.safetensors", "checkpoints").candidates[0]
    assert (best.source, best.directory, best.size, best.sha256) == (
        "huggingface",
        "checkpoints",
        len(DATA),
        SHA,
    )
    assert httpx.get(best.url).content == DATA


def test_civitai_search_finds_a_lora_with_its_folder_and_hash(civitai):
    on_civitai(civitai, 5, "paper_cut_style.safetensors", "Paper Cut Style")
    best = finder.find("paper_cut_style.safetensors").candidates[0]
    assert (best.source, best.directory, best.sha256, best.size) == (
        "civitai",
        "loras",
        SHA,
        len(DATA),
    )
    assert best.url == civitai.download_url(50)


def test_a_sha256_match_from_civitai_by_hash_beats_a_file_with_the_exact_name(hf, civitai):
    hf.add_file("someone/glow", "glow_lora.safetensors", b"another file")
    on_civitai(civitai, 7, "Neon-v3.safetensors", "Neon")
    result = finder.find("glow_lora.safetensors", sha256=SHA)
    assert summary(result) == [
        ("civitai", "loras", "Neon-v3.safetensors", 100),
        ("huggingface", "", "glow_lora.safetensors", 60 - 50),
    ]
    assert civitai.requests[0]["path"] == f"/api/v1/model-versions/by-hash/{SHA}"


def test_an_exact_file_name_beats_a_normalised_one_which_beats_a_partial_one(hf):
    hf.add_file("org/moon-light", "moon_light_fp8.safetensors", b"a")
    hf.add_file("org/moon-light", "Moon-Light.safetensors", b"b")
    hf.add_file("org/moon-light", "moon_light.safetensors", b"c")
    hf.add_file("org/moon-light", "moon_light.yaml", b"d")  # a config, not a model file
    names = [(c.filename, c.score) for c in finder.find("moon_light.safetensors").candidates]
    assert names == [
        ("moon_light.safetensors", 60),
        ("Moon-Light.safetensors", 50),
        ("moon_light_fp8.safetensors", 27),
    ]


def test_folder_agreement_breaks_a_tie(hf):
    hf.add_file("org/ink", "checkpoints/ink.safetensors", b"a")
    hf.add_file("org/ink", "unet/ink.safetensors", b"b")
    result = finder.find("ink.safetensors", "diffusion_models")
    assert summary(result) == [
        ("huggingface", "diffusion_models", "ink.safetensors", 70),
        ("huggingface", "checkpoints", "ink.safetensors", 55),
    ]


def test_a_cached_answer_is_used_without_network(hf, civitai):
    hf.add_file("org/ink", "ink.safetensors", DATA)
    first = finder.find("ink.safetensors", sha256=SHA)
    asked = len(hf.requests) + len(civitai.requests)
    assert finder.find("ink.safetensors", sha256=SHA) == first
    assert len(hf.requests) + len(civitai.requests) == asked
    assert FinderAnswer.objects.filter(source="civitai", payload__isnull=True).exists()  # the miss


def test_an_answer_older_than_the_cache_time_is_fetched_again(hf, settings):
    settings.FINDER_CACHE_SECONDS = 60
    hf.add_file("org/ink", "ink.safetensors", DATA)
    finder.find("ink.safetensors")
    hf.add_file("org/ink", "INK.safetensors", DATA)
    assert len(finder.find("ink.safetensors").candidates) == 1
    FinderAnswer.objects.update(fetched_at=timezone.now() - timedelta(seconds=61))
    assert len(finder.find("ink.safetensors").candidates) == 2


def test_a_down_source_opens_its_breaker_and_the_others_still_answer(hf, civitai):
    hf.add_file("org/ink", "ink.safetensors", DATA)
    civitai.outage = 503
    for _ in range(2):  # RECOVERY_BREAKER_THRESHOLD
        why = finder.find("ink.safetensors").sources["civitai"]
        assert why == "unavailable: The server at 127.0.0.1 has a problem on its side (HTTP 503)"
    asked = len(civitai.requests)
    result = finder.find("ink.safetensors")
    assert CircuitBreaker.objects.get(key="finder:civitai").state == "open"
    assert result.sources["civitai"].startswith("unavailable: it failed repeatedly; next try")
    assert len(civitai.requests) == asked
    assert result.sources["huggingface"] == "ok"
    assert summary(result) == [("huggingface", "", "ink.safetensors", 60)]


def test_a_source_that_came_back_closes_its_breaker_on_the_next_probe(civitai, settings):
    settings.RECOVERY_BREAKER_COOLDOWN = 0
    civitai.outage = 503
    finder.find("ink.safetensors")
    finder.find("ink.safetensors")
    civitai.outage = None
    assert finder.find("ink.safetensors").sources["civitai"] == "ok"
    assert CircuitBreaker.objects.get(key="finder:civitai").state == "closed"


def test_a_stopped_source_is_named_unavailable_and_the_search_goes_on(hf, civitai):
    hf.stop()
    on_civitai(civitai, 1, "ink.safetensors", "Ink")
    result = finder.find("ink.safetensors")
    assert result.sources["huggingface"].startswith("unavailable: Could not connect to 127.0.0.1")
    assert result.sources["civitai"] == "ok"
    assert [c.source for c in result.candidates] == ["civitai"]


def test_model_list_entries_come_from_the_installed_comfyui_manager():
    package = importlib.util.find_spec("comfyui_manager").submodule_search_locations[0]
    entries = json.loads((Path(package) / "model-list.json").read_text())["models"]
    entry = next(e for e in entries if e["type"] == "upscale" and e["save_path"] == "default")
    result = finder.find(entry["filename"], "upscale_models")
    best = result.candidates[0]
    assert (best.source, best.directory, best.url, best.score) == (
        "model-list",
        "upscale_models",
        entry["url"],
        70,
    )
    assert result.sources["model-list"] == "ok"


@pytest.fixture
def manager_site(settings, monkeypatch):
    """ComfyUI-Manager's data site serving the model list, with the package out of sight."""
    monkeypatch.setattr(manager_data, "PACKAGE", "comfyhub_test_absent_package")
    with FakeManagerData() as site:
        site.put("model-list.json", {"models": [INK_VAE]})
        settings.MANAGER_DATA_URL = site.url("/")
        yield site


def test_without_the_package_the_model_list_is_downloaded_then_refreshed_by_etag(
    manager_site, settings
):
    best = finder.find("ink_vae.safetensors").candidates[0]
    os.utime(settings.DATA_DIR / "cache" / "model-list.json", (0, 0))  # older than the TTL
    finder.find("ink_vae.safetensors")
    finder.find("ink_vae.safetensors")
    assert (best.source, best.directory, best.url) == ("model-list", "vae", INK_VAE["url"])
    assert [r["status"] for r in manager_site.requests] == [200, 304]


def test_a_stale_downloaded_model_list_still_answers_while_its_site_is_down(manager_site, settings):
    finder.find("ink_vae.safetensors")
    manager_site.stop()
    os.utime(settings.DATA_DIR / "cache" / "model-list.json", (0, 0))
    result = finder.find("ink_vae.safetensors")
    assert result.sources["model-list"] == "ok"
    assert [c.source for c in result.candidates] == ["model-list"]
    assert CircuitBreaker.objects.get(key="finder:model-list").consecutive_failures == 1


def test_an_open_breaker_keeps_the_model_list_site_unasked(manager_site):
    for _ in range(2):  # RECOVERY_BREAKER_THRESHOLD
        CircuitBreaker.record_failure("finder:model-list", timezone.now())
    why = finder.find("ink_vae.safetensors").sources["model-list"]
    host = manager_site.base.removeprefix("http://")
    assert why.startswith(f"unavailable: {host} failed repeatedly; next try after")
    assert manager_site.requests == []


def test_local_files_are_candidates_by_name_in_any_subfolder_and_by_hash(settings):
    path = put(settings.MODELS_DIR, "loras/styles/ink.safetensors")
    index.record(path, SHA)
    by_name = finder.find("ink.safetensors", "loras").candidates
    by_hash = finder.find("renamed.safetensors", sha256=SHA).candidates
    assert [(c.source, c.url, c.size, c.score) for c in by_name] == [
        ("local", path.as_uri(), len(DATA), 70)
    ]
    assert [(c.source, c.filename, c.score) for c in by_hash] == [("local", "ink.safetensors", 100)]


def test_a_file_in_the_models_folder_counts_before_it_is_indexed(settings):
    put(settings.MODELS_DIR, "vae/fresh.safetensors")
    assert summary(finder.find("fresh.safetensors", "vae")) == [
        ("local", "vae", "fresh.safetensors", 70)
    ]


def test_the_link_given_with_the_model_ranks_above_a_name_match_elsewhere(hf):
    hf.add_file("org/ink", "ink.safetensors", DATA)
    result = finder.find("ink.safetensors", "vae", url="https://files.invalid/ink.safetensors")
    assert [(c.source, c.url, c.score) for c in result.candidates] == [
        ("url", "https://files.invalid/ink.safetensors", 60 + 10 + 40),
        ("huggingface", hf.url("/org/ink/resolve/main/ink.safetensors"), 60),
    ]
    assert list(result.sources) == [
        "url",
        "known",
        "local",
        "model-list",
        "templates",
        "huggingface",
        "civitai",
    ]


def test_a_hugging_face_page_link_becomes_its_file_and_merges_with_what_hf_knows(hf):
    hf.add_file("org/ink", "ink.safetensors", DATA)
    result = finder.find("ink.safetensors", url=hf.url("/org/ink/blob/main/ink.safetensors"))
    assert [(c.source, c.url, c.sha256, c.size) for c in result.candidates] == [
        ("url", hf.url("/org/ink/resolve/main/ink.safetensors"), SHA, len(DATA))
    ]


def test_a_link_that_is_not_http_makes_only_that_source_unavailable():
    result = finder.find("ink.safetensors", url="ftp://files.invalid/ink.safetensors")
    assert result.sources["url"].startswith("unavailable: The link given with the model is not")
    assert result.sources["local"] == "ok"


@pytest.mark.parametrize(
    "name, sha256",
    [
        ("", ""),
        ("../../etc/passwd", ""),
        ("/abs/x.safetensors", ""),
        ("C:\\m\\x.ckpt", ""),
        ("x.safetensors", "abc123"),
    ],
)
def test_bad_input_is_refused_before_any_source_is_asked(hf, name, sha256):
    with pytest.raises(finder.BadInput):
        finder.find(name, sha256=sha256)
    assert hf.requests == []


def test_find_model_json_lists_candidates_best_first_and_every_source(hf):
    hf.add_file("org/ink", "loras/ink.safetensors", DATA)
    out = io.StringIO()
    call_command("find_model", "ink.safetensors", "--directory", "loras", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "query": "ink.safetensors",
        "candidates": [
            {
                "source": "huggingface",
                "url": hf.url("/org/ink/resolve/main/loras/ink.safetensors"),
                "filename": "ink.safetensors",
                "directory": "loras",
                "size": len(DATA),
                "sha256": SHA,
                "score": 70,
            },
        ],
        "sources": {
            "known": "ok",
            "local": "ok",
            "model-list": "ok",
            "templates": "ok",
            "huggingface": "ok",
            "civitai": "ok",
        },
    }


def test_find_model_prints_candidates_and_sources_for_people(hf):
    hf.add_file("org/ink", "loras/ink.safetensors", DATA)
    out = io.StringIO()
    call_command("find_model", "ink.safetensors", "--directory", "loras", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["70", "huggingface", "loras/ink.safetensors", "1.2", "KB"]
    assert lines[1].split() == [hf.url("/org/ink/resolve/main/loras/ink.safetensors"), "(org/ink)"]
    assert lines[2:] == [
        "known: ok",
        "local: ok",
        "model-list: ok",
        "templates: ok",
        "huggingface: ok",
        "civitai: ok",
    ]


def test_find_model_exits_1_when_nothing_is_found(hf, civitai):
    hf.outage = civitai.outage = 503
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("find_model", "nothing-like-it.safetensors", "--json", stdout=out)
    assert exited.value.code == 1
    assert json.loads(out.getvalue())["candidates"] == []


@pytest.mark.parametrize(
    "args", [["../x.safetensors"], ["x.safetensors", "--sha256", "f00"], ["x", "--url", "ftp://a"]]
)
def test_find_model_refuses_bad_input_with_status_2(args):
    with pytest.raises(CommandError) as refused:
        call_command("find_model", *args, "--json")
    assert refused.value.returncode == 2


def test_find_model_exits_2_from_the_command_line(tmp_path):
    env = {**os.environ, "COMFYHUB_DATA_DIR": str(tmp_path)}
    done = manage("find_model", "/etc/passwd", "--json", env=env)
    assert done.returncode == 2
    assert "must be relative" in done.stderr


def test_a_template_file_name_is_answered_from_the_template_catalog_with_no_network(hf, civitai):
    hf.stop()
    civitai.stop()
    package = importlib.util.find_spec("comfyui_manager").submodule_search_locations[0]
    listed = {
        e["url"] for e in json.loads((Path(package) / "model-list.json").read_text())["models"]
    }
    link = next(c for c in finder_sources.template_links() if c.url not in listed)
    result = finder.find(link.filename, link.directory)
    best = result.candidates[0]
    assert (best.source, best.url, best.directory) == ("templates", link.url, link.directory)
    assert best.label.startswith("official template ") and result.sources["templates"] == "ok"
    assert result.sources["huggingface"].startswith("unavailable")
