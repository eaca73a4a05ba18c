"""Hosts with special handling: Hugging Face and CivitAI. Tokens go only to their host."""

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
from django.conf import settings

from comfyhub.library.models import StoredToken, TokenName
from comfyhub.library.paths import host_of
from recovery.errors import JobError
from recovery.models import Category

CIVITAI_PAGE = re.compile(r"^/models/(?P<model>\d+)(?:/[^/]*)?/?$")


@dataclass(frozen=True)
class Resolved:
    url: str
    filename: str = ""
    sha256: str = ""
    size_hint: int | None = None  # CivitAI's sizeKB: good for a space check, not exact


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a malformed port matches no endpoint
        return scheme, "", None
    return scheme, (parts.hostname or "").lower(), port


def token_setting(url: str) -> str:
    """The setting that holds the token for `url`, or "" when no token may go there.

    A token goes only to the exact scheme, host and port of its endpoint (by default
    https://huggingface.co and https://civitai.com): never over plain http to the same
    host, where anyone on the way could read it.
    """
    here = origin(url)
    if here == origin(settings.HF_ENDPOINT):
        return TokenName.HF.value
    if here == origin(settings.CIVITAI_ENDPOINT):
        return TokenName.CIVITAI.value
    return ""


def endpoint_over_https(url: str) -> str:
    """The https:// form of `url` when that one would carry a token; else ""."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return ""
    secure = parts._replace(scheme="https", netloc=host_of(url).removesuffix(":80")).geturl()
    return secure if token_setting(secure) else ""


def token_for(url: str) -> tuple[str, str]:
    """(setting name, token) for the host of `url`, or ("", "") for any other host.

    A token saved on the Settings page wins over the environment variable: it is the one
    the user set most recently, and it takes effect without a restart.
    """
    name = token_setting(url)
    if not name:
        return "", ""
    return name, StoredToken.objects.value_of(name) or getattr(settings, name)


def auth_headers(url: str) -> dict[str, str]:
    _, token = token_for(url)
    return {"Authorization": f"Bearer {token}"} if token else {}


def normalise(url: str) -> str:
    """Hugging Face page links (/blob/) become file links (/resolve/)."""
    if host_of(url) == host_of(settings.HF_ENDPOINT) and "/blob/" in url:
        return url.replace("/blob/", "/resolve/", 1)
    return url


def resolve(url: str, client: httpx.Client) -> Resolved:
    """Turn a model page URL into the file to fetch; other URLs pass through."""
    url = normalise(url)
    parts = urlsplit(url)
    page = CIVITAI_PAGE.match(parts.path)
    if host_of(url) != host_of(settings.CIVITAI_ENDPOINT) or not page:
        return Resolved(url)
    version = parse_qs(parts.query).get("modelVersionId", [""])[0]
    if version:
        return civitai_file(civitai_get(client, f"/api/v1/model-versions/{version}"))
    model = civitai_get(client, f"/api/v1/models/{page['model']}")
    if not model.get("modelVersions"):
        raise JobError(
            f"CivitAI model {page['model']} has no downloadable version.",
            category=Category.NOT_FOUND,
        )
    return civitai_file(model["modelVersions"][0])


def civitai_get(client: httpx.Client, path: str) -> dict:
    api = settings.CIVITAI_ENDPOINT.rstrip("/") + path
    response = client.get(api, headers=auth_headers(api))
    response.raise_for_status()
    return response.json()


def civitai_file(version: dict) -> Resolved:
    files = version.get("files") or []
    chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
    if chosen is None:
        raise JobError(
            f"CivitAI version {version.get('id')} lists no files.", category=Category.NOT_FOUND
        )
    size_kb = chosen.get("sizeKB")
    return Resolved(
        url=chosen.get("downloadUrl") or version["downloadUrl"],
        filename=chosen.get("name", ""),
        sha256=(chosen.get("hashes") or {}).get("SHA256", "").lower(),
        size_hint=int(size_kb * 1024) if size_kb else None,
    )
