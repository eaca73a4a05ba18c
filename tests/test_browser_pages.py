"""Real browser (Debian's chromium) against `serve` with a real worker: the template
gallery's pictures, and the project page as ComfyUI sees it (a failed import, fixed, gone
after Check again). Screenshots at 1280 and 390 px land in each test's tmp dir."""

import json
import re

import pytest

from tests.browsing import chromium, comfyhub, shoot, watched
from tests.conftest import Server, manage
from tests.fakecomfy import git, make_repo

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

WIDTHS = (1280, 390)
BROKEN = 'raise RuntimeError("boom: the weights are missing")\n'
WORKING = 'NODE_CLASS_MAPPINGS = {"FakeSampler": object}\n'
ALL_PICTURES_IN = """() => {
    const pictures = [...document.querySelectorAll("#gallery img")];
    return pictures.length > 0 && pictures.every(img => img.complete);
}"""


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = comfyhub(tmp_path_factory.mktemp("pages"))
    yield running
    running.stop()


def opened(browser, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900})
    return context, context.new_page()


def scroll_through(page) -> None:
    """Scroll the whole page a screen at a time, so every lazy picture is asked for."""
    height = page.evaluate("document.body.scrollHeight")
    for top in range(0, height + 900, 600):
        page.evaluate(f"window.scrollTo(0, {top})")
        page.wait_for_timeout(50)  # let the lazy loader see the new viewport


@pytest.mark.parametrize("width", WIDTHS)
def test_the_gallery_shows_every_template_picture_loaded_and_no_error(
    browser, server, width, tmp_path
):
    context, page = opened(browser, width)
    problems = watched(page)
    asked = []
    page.on("request", lambda r: "/picture/" in r.url and asked.append(r.url))
    page.goto(server.base + "/projects/new/")
    scroll_through(page)
    page.wait_for_function(ALL_PICTURES_IN, timeout=30_000)
    sizes = page.eval_on_selector_all("#gallery img", "all => all.map(i => i.naturalWidth)")
    placeholders = page.locator("#gallery .picture.none").count()
    shoot(page, tmp_path, f"gallery-{width}-all")
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, tmp_path, f"gallery-{width}", full_page=False)
    context.close()
    assert sizes, "no picture: is comfyui-workflow-templates-media-image installed?"
    assert all(size > 0 for size in sizes), sizes
    assert placeholders and len(set(asked)) == len(sizes)  # a placeholder asks for nothing
    assert problems == []


def fragile(server: Server, tmp_path) -> tuple[str, str]:
    """A project whose one pack raises on import; its slug and the pack's fixed commit."""
    pack, commits = make_repo(
        tmp_path / "repos" / "Broken-Nodes", {"__init__.py": BROKEN}, {"__init__.py": WORKING}
    )
    launcher = {
        "format": "comfyui_launcher",
        "workflow_json": {
            "nodes": [{"id": 1, "type": "FakeSampler", "mode": 0, "widgets_values": []}],
            "links": [],
        },
        "snapshot_json": {
            "comfyui": "",
            "git_custom_nodes": {str(pack): {"hash": commits[0], "disabled": False}},
        },
        "files": [],
    }
    (tmp_path / "fragile.json").write_text(json.dumps(launcher))
    made = manage(
        "create_project",
        "Fragile",
        "--launcher",
        str(tmp_path / "fragile.json"),
        "--json",
        env=server.env,
        timeout=300,
    )
    created = json.loads(made.stdout)
    assert created["status"] == "attention", made.stdout + made.stderr
    return created["slug"], commits[1]


def test_a_failed_import_shows_with_its_traceback_and_check_again_clears_it_after_the_fix(
    browser, server, tmp_path
):
    slug, fixed = fragile(server, tmp_path)
    context, page = opened(browser, 1280)
    problems = watched(page)
    page.goto(f"{server.base}/projects/{slug}/")
    finding = page.locator("li", has_text="failed to import")
    assert "Broken-Nodes" in finding.inner_text() and "boom" in finding.inner_text()
    finding.get_by_text("What ComfyUI printed").click()
    assert "RuntimeError: boom" in finding.locator("pre").inner_text()
    shoot(page, tmp_path, "project-failed-import-1280")
    small = context.new_page()
    small.set_viewport_size({"width": 390, "height": 900})
    small.goto(f"{server.base}/projects/{slug}/")
    shoot(small, tmp_path, "project-failed-import-390")
    pack = next(server.data_dir.glob("**/custom_nodes/Broken-Nodes"))
    git(pack, "checkout", "-q", fixed)  # the fix
    page.get_by_role("button", name="Check again", exact=True).click()
    page.wait_for_url(re.compile(rf"/projects/{slug}/$"))
    page.get_by_text("ComfyUI sees every node type and model").wait_for(timeout=90_000)
    assert page.locator("li", has_text="failed to import").count() == 0
    page.locator('.badge[data-status="ready"]').first.wait_for(timeout=30_000)
    shoot(page, tmp_path, "project-fixed-1280")
    context.close()
    assert problems == []
