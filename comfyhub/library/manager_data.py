"""ComfyUI-Manager's data files (extension-node-map.json, custom-node-list.json,
model-list.json, …), for the node map and the model finder alike.

The installed `comfyui-manager` package's copy comes first (unless MANAGER_DATA_PACKAGE is
off). Without it, a file is downloaded from `settings.MANAGER_DATA_URL` into DATA_DIR/cache
and revalidated by ETag once it is older than the caller's `max_age`. Each request waits at
most FINDER_TIMEOUT seconds. While the site cannot be reached, or the caller's circuit
breaker is open, the cached copy answers however old it is: stale data beats none. With no
copy at all the failure reaches the caller, who degrades (see `nodemap.default`).
"""

import importlib.util
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings
from django.utils import timezone

from recovery.classify import classify
from recovery.errors import BreakerOpen, JobError
from recovery.models import Category, CircuitBreaker

logger = logging.getLogger(__name__)

PACKAGE = "comfyui_manager"
MAX_DOWNLOAD = 64 * 2**20


def manager_file(
    name: str, base_url: str | None = None, *, max_age: float = 0, breaker: str | None = None
) -> Path:
    """Path to ComfyUI-Manager's data file `name`: the installed package's copy, else (and
    always when `base_url` is given or MANAGER_DATA_PACKAGE is off) a download from
    `base_url` or MANAGER_DATA_URL, kept in DATA_DIR/cache as `cached_download` describes."""
    package = package_dir(PACKAGE) if settings.MANAGER_DATA_PACKAGE else None
    if base_url is None and package and (package / name).is_file():
        return package / name
    url = urljoin((base_url or settings.MANAGER_DATA_URL).rstrip("/") + "/", name)
    path = Path(settings.DATA_DIR) / "cache" / name
    return cached_download(url, path, max_age=max_age, breaker=breaker)


def package_dir(name: str) -> Path | None:
    """Where an installed package's files are; found without importing it (importing
    comfyui_manager would pull its runtime dependencies)."""
    spec = importlib.util.find_spec(name)
    locations = spec.submodule_search_locations if spec else None
    return Path(locations[0]) if locations else None


def cached_download(
    url: str, path: Path, *, max_age: float = 0, breaker: str | None = None
) -> Path:
    """`path` holding the JSON body of `url`. A cached copy younger than `max_age` seconds
    is used without asking; an older one is revalidated with If-None-Match. With `breaker`
    (a CircuitBreaker key) the site is asked only when the breaker allows it, and the
    outcome is recorded there. When no new copy can be had, the cached copy is used as it
    is; only without one does the failure reach the caller."""
    if path.is_file() and time.time() - path.stat().st_mtime < max_age:
        return path
    try:
        fetch(url, path, breaker)
    except Exception as exc:
        if not path.is_file():
            raise
        logger.warning("Using the cached %s: %s", path.name, classify(exc).message)
    return path


def fetch(url: str, path: Path, breaker: str | None) -> None:
    """download() behind the breaker `breaker` (none when it is None): a 404 or a broken
    file is an answer too, so only a failure that can pass on its own counts against it."""
    try:
        with CircuitBreaker.guard(breaker or ""):
            download(url, path)
    except BreakerOpen as exc:
        raise breaker_open(url, exc.retry_at) from None


def breaker_open(url: str, retry_at) -> JobError:
    when = timezone.localtime(retry_at)
    return JobError(
        f"{urlsplit(url).netloc} failed repeatedly; next try after {when:%H:%M:%S %Z}.",
        category=Category.SERVER,
        retry_after=max(0.0, (retry_at - timezone.now()).total_seconds()),
    )


def download(url: str, path: Path) -> None:
    """Replace `path` with the body of `url`, unless the cached copy's ETag still holds."""
    etag_file = path.with_name(path.name + ".etag")
    known = path.is_file() and etag_file.is_file()
    headers = {"If-None-Match": etag_file.read_text().strip()} if known else {}
    timeout = settings.FINDER_TIMEOUT
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 304:
            os.utime(path)  # confirmed current: fresh for another max_age
            return
        r.raise_for_status()
        store(r, path)
    etag = r.headers.get("etag")
    if etag:
        etag_file.write_text(etag)
    else:
        etag_file.unlink(missing_ok=True)


def store(response: httpx.Response, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two processes refreshing at once must not write into one file.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_bytes():
                if out.tell() + len(chunk) > MAX_DOWNLOAD:
                    message = f"{response.url} is larger than expected."
                    raise JobError(message, category=Category.VALIDATION)
                out.write(chunk)
        json.loads(partial.read_bytes())  # a broken download must not replace a good copy
        # Replace, never truncate in place: a reader in another process sees old or new.
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
