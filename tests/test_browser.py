"""Real browser (Debian's chromium via Playwright) against `serve` with a real worker.

Screenshots of every page land in test-artifacts/screens/ (not committed).
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from tests.browsing import chromium, comfyhub
from tests.conftest import ROOT, Server
from tests.fileserver import FileServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SCREENS = ROOT / "test-artifacts" / "screens"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def files():
    with FileServer() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = comfyhub(tmp_path_factory.mktemp("browser"))
    yield running
    running.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def queue(page, server: Server, url: str, dest: str):
    page.goto(server.base + "/downloads/")
    page.get_by_label("URL").fill(url)
    page.get_by_label("Save as").fill(dest)
    page.get_by_role("button", name="Download").click()
    page.wait_for_url(re.compile(r"/downloads/$"))
    return page.locator("article.job", has_text=dest)


def wait_progress(page, dest: str, at_least: int) -> None:
    """Live swaps replace the card, so look it up afresh on every check."""
    page.wait_for_function(
        """([dest, least]) => {
            const card = [...document.querySelectorAll("article.job")]
                .find(a => a.textContent.includes(dest));
            const bar = card && card.querySelector("progress");
            return bar && Number(bar.value) >= least;
        }""",
        arg=[dest, at_least],
        timeout=30_000,
    )


def test_a_401_download_shows_the_auth_message_with_a_link_to_settings(page, server, files):
    card = queue(
        page, server, files.add("/gated.bin", b"x" * 1000, auth="Bearer t"), "checkpoints/gated.bin"
    )
    card.locator('.badge[data-status="failed"]').wait_for(timeout=30_000)
    assert "refused the download (HTTP 401)" in card.inner_text()
    assert card.locator('a[href="/settings/"]').count() == 1
    shoot(page, "downloads-auth-failed")


def test_pause_and_resume_work_and_the_bar_reaches_100_live(page, server, files):
    url = files.add("/slow.bin", os.urandom(8 * MiB), rate=2 * MiB)
    card = queue(page, server, url, "loras/slow.bin")
    wait_progress(page, "loras/slow.bin", 1)
    card.get_by_role("button", name="Pause").click()
    card = page.locator("article.job", has_text="loras/slow.bin")
    card.locator('.badge[data-status="paused"]').wait_for(timeout=30_000)
    card.get_by_role("button", name="Resume").click()
    card = page.locator("article.job", has_text="loras/slow.bin")
    card.locator('.badge[data-status="succeeded"]').wait_for(timeout=60_000)
    assert card.locator("progress").get_attribute("value") == "100"


def test_reloading_mid_download_shows_the_current_state(page, server, files):
    url = files.add("/reload.bin", os.urandom(4 * MiB), rate=MiB)
    queue(page, server, url, "vae/reload.bin")
    wait_progress(page, "vae/reload.bin", 25)
    page.reload()
    card = page.locator("article.job", has_text="vae/reload.bin")
    assert int(card.locator("progress").get_attribute("value")) >= 25
    card.locator('.badge[data-status="succeeded"]').wait_for(timeout=60_000)
    shoot(page, "downloads-after-reload")


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_renders_for_a_screenshot(browser, server, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    for path in [
        "/",
        "/projects/new/",
        "/projects/import/",
        "/downloads/",
        "/recovery/",
        "/settings/",
        "/system/",
    ]:
        response = page.goto(server.base + path)
        assert response.status == 200, path
        shoot(page, f"{width}{path.strip('/').replace('/', '-') or '-projects'}")
    context.close()


def test_screens_folder_is_ignored_by_git():
    assert "test-artifacts/" in (ROOT / ".gitignore").read_text()
    assert Path(SCREENS).is_relative_to(ROOT)


def model_node(node_id: int, node_type: str, folder: str, name: str, url: str, data: bytes):
    model = {
        "name": name,
        "url": url,
        "directory": folder,
        "hash": hashlib.sha256(data).hexdigest(),
        "hash_type": "SHA256",
    }
    return {
        "id": node_id,
        "type": node_type,
        "mode": 0,
        "widgets_values": [name],
        "properties": {"models": [model]},
    }


def test_an_imported_workflow_downloads_both_models_live_through_drops(page, server, files):
    sure, flaky = os.urandom(3 * MiB), os.urandom(4 * MiB)
    nodes = [
        model_node(
            1,
            "CheckpointLoaderSimple",
            "checkpoints",
            "sure.safetensors",
            files.add("/sure.safetensors", sure, rate=2 * MiB),
            sure,
        ),
        model_node(
            2,
            "LoraLoaderModelOnly",
            "loras",
            "flaky.safetensors",
            files.add(
                "/flaky.safetensors", flaky, rate=2 * MiB, script=["drop:700000", "drop:1500000"]
            ),
            flaky,
        ),
    ]
    page.goto(server.base + "/projects/import/")
    page.locator("#id_text").fill(json.dumps({"nodes": nodes, "links": [], "version": 0.4}))
    page.get_by_role("button", name="Check what it needs").click()
    shoot(page, "import-requirements")
    for fieldset in page.locator("fieldset.model").all():
        fieldset.locator('input[type="radio"][value="url"]').check()
        name = "sure" if "sure.safetensors" in fieldset.inner_text() else "flaky"
        fieldset.locator('input[type="url"]').fill(files.url(f"/{name}.safetensors"))
    page.get_by_label("Project name").fill("Two Models")
    page.get_by_role("button", name="Create the project").click()
    page.wait_for_url(re.compile(r"/projects/two-models/$"))
    for dest in ("checkpoints/sure.safetensors", "loras/flaky.safetensors"):
        wait_progress(page, dest, 100)
    # A bar reaches 100 % before the file is verified and renamed: wait for the badges.
    succeeded = """document.querySelectorAll('.badge[data-status="succeeded"]').length >= 2"""
    page.wait_for_function(succeeded, timeout=30_000)
    assert len([r for r in files.requests if r["path"] == "/flaky.safetensors"]) >= 3
    page.locator('#main .badge[data-status="succeeded"]').first.wait_for(timeout=60_000)
    shoot(page, "project-two-models")
