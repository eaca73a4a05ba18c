"""Real browser against `serve` with its worker: an import's searches run as jobs while
the requirements page is already on screen, and their candidates arrive live."""

import json
import re

import pytest

from tests.conftest import Server, free_port
from tests.fakeapis import FakeHuggingFace
from tests.fakecomfy import comfyui_repo
from tests.test_browser import browser as browser_fixture
from tests.test_browser import shoot

browser = browser_fixture  # the module-scoped chromium of test_browser.py

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

NAMES = ["alpha", "bravo", "charlie", "delta", "echo"]
SLOW_SEARCH = 3.0  # seconds Hugging Face takes to answer each search


@pytest.fixture(scope="module")
def hf():
    with FakeHuggingFace() as server:
        server.search_delay = SLOW_SEARCH
        for name in NAMES:
            server.add_file(f"studio/{name}-mix", f"{name}-mix.safetensors", name.encode() * 64)
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, hf):
    data = tmp_path_factory.mktemp("browser-import")
    comfyui, _ = comfyui_repo(data / "repos")
    running = Server(
        data,
        COMFYHUB_MODELS_DIR=str(data / "models"),
        COMFYHUB_ALLOW_LOCAL_REPOS="1",
        COMFYHUB_COMFYUI_REPO=str(comfyui),
        COMFYHUB_HF_ENDPOINT=hf.base,
        COMFYHUB_CIVITAI_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # down, fast
        COMFYHUB_FINDER_TIMEOUT=str(SLOW_SEARCH * 3),
    ).start()
    yield running
    running.stop()


def check_needs(page, server: Server, text: str) -> float:
    """Import `text` from the import page; seconds from the click (the POST leaving) to
    the requirements page's DOM being ready, as the browser's navigation timing says."""
    page.goto(server.base + "/projects/import/")
    page.locator("#id_text").fill(text)
    page.get_by_role("button", name="Check what it needs").click()
    page.wait_for_url(re.compile(r"/projects/import/[\w-]+/$"), wait_until="domcontentloaded")
    timing = 'performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd'
    return page.evaluate(timing) / 1000


def workflow() -> str:
    nodes = [
        {
            "id": i,
            "type": "CheckpointLoaderSimple",
            "mode": 0,
            "widgets_values": [f"{n}-mix.safetensors"],
        }
        for i, n in enumerate(NAMES, start=1)
    ]
    return json.dumps({"nodes": nodes, "links": [], "version": 0.4})


def test_five_missing_models_show_at_once_and_their_candidates_arrive_live(browser, server, hf):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # A fresh server's first import builds the node map (every official template parsed,
    # seconds, searches or not): let a workflow without models pay for that first.
    check_needs(page, server, json.dumps({"nodes": [{"id": 1, "type": "KSampler"}]}))
    shown_in = check_needs(page, server, workflow())
    assert shown_in < 1.0, f"the requirements page took {shown_in:.2f} s"
    assert page.locator("fieldset.model").count() == 5
    assert page.locator("fieldset.model", has_text="Refresh to see what it found").count() == 5
    shoot(page, "import-searching")
    page.evaluate("window.notReloaded = true")
    chosen = page.locator('fieldset.model input[type="radio"][value="c0"]')
    page.wait_for_function(
        "document.querySelectorAll('fieldset.model input[value=\"c0\"]').length === 5",
        timeout=60_000,
    )
    assert page.evaluate("window.notReloaded === true")  # live, not a reload
    for name in NAMES:
        fieldset = page.locator("fieldset.model", has_text=f"checkpoints/{name}-mix.safetensors")
        assert f"{name}-mix.safetensors · Hugging Face" in fieldset.inner_text()
    assert len([r for r in hf.requests if r["path"] == "/api/models"]) >= 5
    shoot(page, "import-candidates")
    for radio in chosen.all():
        radio.check()
    page.get_by_label("Project name").fill("Five Models")
    page.get_by_role("button", name="Create the project").click()
    page.wait_for_url(re.compile(r"/projects/five-models/$"))
    assert "checkpoints/alpha-mix.safetensors" in page.content()
    page.close()
