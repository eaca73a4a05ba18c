"""What the browser tests share: Debian's chromium driven by Playwright (no browser
download), a page that records what went wrong in it, and full-page screenshots."""

import os
from pathlib import Path

import pytest

from tests.conftest import Server, free_port
from tests.fakecomfy import comfyui_repo

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium():
    """Yield a launched headless chromium (a fixture's body); skip without the package."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium package: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def watched(page) -> list[str]:
    """Console errors, uncaught exceptions, failed requests and HTTP errors on `page`, as
    they happen (the list fills while the test runs)."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    # A navigation aborts the page's polls in flight: that is no failure.
    page.on(
        "requestfailed",
        lambda r: r.failure != "net::ERR_ABORTED" and problems.append(f"failed: {r.url}"),
    )
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    return problems


def shoot(page, folder: Path, name: str, full_page: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def comfyhub(data: Path) -> Server:
    """`serve` started on `data`, with a stand-in ComfyUI repo and the finder's remote
    sources on a closed port (down, and fast to say so); the caller stops it."""
    comfyui, _ = comfyui_repo(data / "repos")
    closed = f"http://127.0.0.1:{free_port()}"
    return Server(
        data,
        COMFYHUB_MODELS_DIR=str(data / "models"),
        COMFYHUB_ALLOW_LOCAL_REPOS="1",
        COMFYHUB_COMFYUI_REPO=str(comfyui),
        COMFYHUB_HF_ENDPOINT=closed,
        COMFYHUB_CIVITAI_ENDPOINT=closed,
    ).start()
