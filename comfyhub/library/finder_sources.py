"""Where the finder's candidates come from: one function per source, each taking the
`Query` (and, for remote sources, a `Remote`) and returning unscored `Candidate`s.

Remote sources read through `Remote`: an answer comes from the database while it is
younger than FINDER_CACHE_SECONDS, otherwise from the network, once the source's circuit
breaker allows it. Response shapes are the real APIs' (tests/fakeapis.py mirrors them).
ComfyUI-Manager's model list is a file instead (`manager_data`), revalidated once older
than FINDER_CACHE_SECONDS, behind its own breaker (`finder:model-list`).

Searches read later pages (Hugging Face's `Link: rel="next"` header, CivitAI's
`metadata.nextPage`), up to SEARCH_PAGES pages, only while no page so far had a match
(`Query.matches`: the same normalised file name, or the wanted sha256). Each page is one
request like any other: cached, behind the breaker, within FINDER_TIMEOUT.
"""

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlencode, urlsplit

import httpx
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from comfyhub.library import folders, manager_data, sources
from comfyhub.library.models import FinderAnswer, KnownModel, LocalModel
from comfyhub.library.paths import BadInput, check_url
from comfyhub.workflows import catalog
from recovery.classify import in_brief
from recovery.errors import BreakerOpen, JobError
from recovery.models import Category, CircuitBreaker

MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")
SEPARATORS = re.compile(r"[-_.\s]+")
SEARCH_LIMIT = 10
SEARCH_PAGES = 3  # pages of one search read at most, while none has a match
HF_SEARCHES = 3  # ever shorter search terms tried until one finds repos
HF_TREES = 4  # repos per search page, each one's file tree read
KNOWN_ROWS = 50  # rows of the knowledge table read per search, newest first
NEXT_URL_MAX = FinderAnswer._meta.get_field("next_url").max_length
CIVITAI_SEARCHES = 2
CIVITAI_VERSIONS = 3  # newest versions of each model found


def strip_extension(filename: str) -> str:
    # Only a suffix with a letter is an extension: "sd-v1.5" keeps its ".5".
    stem, dot, suffix = filename.rpartition(".")
    return stem if dot and stem and re.search("[a-z]", suffix, re.IGNORECASE) else filename


def extension(filename: str) -> str:
    stem = strip_extension(filename)
    return filename[len(stem) :].lower()


@functools.lru_cache(maxsize=8192)  # the model list's names come up in every search
def normalise(filename: str) -> str:
    """ "SDXL_Base-1.0.safetensors" -> "sdxl base 1 0": case, extension and separators ignored."""
    return " ".join(SEPARATORS.split(strip_extension(filename).lower())).strip()


@dataclass(frozen=True)
class Query:
    name: str  # as the workflow names it; may hold subfolders ("sdxl/base.safetensors")
    directory: str = ""
    sha256: str = ""
    url: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(self.name).name

    def matches(self, filename: str, sha256: str = "") -> bool:
        """Whether a file is the wanted one by name (case, extension and separators
        ignored) or by sha256."""
        if self.sha256 and sha256 and self.sha256 == sha256.lower():
            return True
        return normalise(PurePosixPath(filename).name) == normalise(self.filename)

    def search_terms(self, most: int, joiner: str = "") -> list[str]:
        """The file's stem, then ever shorter prefixes of it cut at separators:
        "flux1-dev-fp8" -> "flux1-dev-fp8", "flux1-dev", "flux1" (search APIs match model
        names, which rarely carry a file's variant suffixes)."""
        stem = strip_extension(self.filename)
        cuts = [match.start() for match in SEPARATORS.finditer(stem)]
        terms = []
        for term in [stem, *(stem[:cut] for cut in reversed(cuts))]:
            term = SEPARATORS.sub(joiner, term).strip() if joiner else term
            if len(term) >= 3 and term not in terms:
                terms.append(term)
        return terms[:most]


@dataclass(frozen=True)
class Candidate:
    """A place the wanted file can come from. `directory` is the ComfyUI models folder it
    belongs in ("" when the source does not say); `size` is in bytes (CivitAI's comes from
    its sizeKB); `label` names it for people (repo, model and version, local path)."""

    source: str
    url: str
    filename: str
    directory: str = ""
    size: int | None = None
    sha256: str = ""
    label: str = ""
    score: int = 0

    def as_json(self) -> dict:
        return {
            "source": self.source,
            "url": self.url,
            "filename": self.filename,
            "directory": self.directory or None,
            "size": self.size,
            "sha256": self.sha256 or None,
            "score": self.score,
        }


# --- Remote access: cache, breaker, failures -------------------------------------------


class Remote:
    """One remote source during one search. A GET is answered from the cache while fresh;
    one that needs the network runs behind the source's breaker (`finder:<source>`),
    which records how it went: a transient failure counts towards opening it, any answer
    (a 404 too) closes it (CircuitBreaker.guard)."""

    def __init__(self, source: str, client: httpx.Client, now):
        self.source, self.client, self.now = source, client, now
        self.breaker = f"finder:{source}"

    def get_json(self, url: str):
        """The JSON body at `url`, or None when the source says there is nothing there."""
        return self.get_page(url)[0]

    def get_page(self, url: str) -> tuple[object, str]:
        """get_json(url) and the link to the next page its `Link` header gives ("": none)."""
        cached = FinderAnswer.objects.fresh(url, self.now)
        if cached is not None:
            return cached.payload, cached.next_url
        with CircuitBreaker.guard(self.breaker):
            payload, next_url = self.request(url)
        FinderAnswer.objects.remember(self.source, url, payload, self.now, next_url)
        return payload, next_url

    def request(self, url: str) -> tuple[object, str]:
        response = self.client.get(url, headers=sources.auth_headers(url))
        if response.status_code in (404, 410):
            return None, ""
        response.raise_for_status()
        return response.json(), same_site(response.links.get("next", {}).get("url", ""), url)

    def failure(self, exc: Exception) -> str:
        """The plain reason to show for `exc`, which made this source unavailable."""
        if isinstance(exc, BreakerOpen):
            when = timezone.localtime(exc.retry_at)
            return f"it failed repeatedly; next try after {when:%H:%M:%S %Z}"
        return in_brief(exc)


def same_site(link: object, asked: str) -> str:
    """`link` (a next page) when it is an http(s) URL on the host that was asked, else "":
    a page never sends the finder, or a token, to another site."""
    if not isinstance(link, str) or not link or len(link) > NEXT_URL_MAX:
        return ""
    parts, origin = urlsplit(link), urlsplit(asked)
    same = (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc)
    return link if same else ""


def expect(payload, kind: type, what: str):
    if not isinstance(payload, kind):
        raise JobError(f"{what} answered in an unexpected shape.", category=Category.SERVER)
    return payload


# --- Sources ------------------------------------------------------------------------------


def embedded(query: Query, remote: Remote | None = None) -> list[Candidate]:
    """The link given with the requirement (a Hugging Face /blob/ page becomes its file)."""
    try:
        url = sources.normalise(check_url(query.url))
    except BadInput:
        raise JobError(
            f"The link given with the model is not an http(s) link: {query.url!r}.",
            category=Category.VALIDATION,
        ) from None
    named = unquote(PurePosixPath(urlsplit(url).path).name)
    filename = named if named.lower().endswith(MODEL_SUFFIXES) else query.filename
    return [Candidate("url", url, filename, query.directory, label="link given with the model")]


def known(query: Query, remote: Remote | None = None) -> list[Candidate]:
    """Links that imported workflows and launcher.json files declared for the wanted name
    or sha256 (comfyhub.library.knowledge), most recently seen first."""
    rows = KnownModel.objects.filter(name_or_hash(query))[:KNOWN_ROWS]
    return [
        Candidate(
            "known",
            row.url,
            PurePosixPath(row.name).name,
            row.directory,
            row.size,
            row.sha256,
            label=f"declared by {row.origin}",
        )
        for row in rows
        if query.matches(row.name, row.sha256)
    ]


def name_or_hash(query: Query) -> Q:
    """Rows that may match `query`: a name holding its longest word, or its sha256
    (Query.matches decides)."""
    longest = max(normalise(query.filename).split(), key=len, default="")
    match = Q(name__icontains=longest) if longest else Q(pk__in=[])
    return match | Q(sha256=query.sha256) if query.sha256 else match


def local(query: Query, remote: Remote | None = None) -> list[Candidate]:
    """Files in the models folder with the wanted name (any subfolder) or sha256."""
    found = {
        (row.directory, row.name): row.sha256
        for row in LocalModel.objects.filter(name_or_hash(query))
        if query.matches(row.name, row.sha256)
    }
    if query.directory:  # present but not indexed yet
        found.setdefault((query.directory, query.name), "")
    candidates = (local_candidate(d, name, sha) for (d, name), sha in found.items())
    return [candidate for candidate in candidates if candidate]


def local_candidate(directory: str, name: str, sha256: str) -> Candidate | None:
    path = (settings.MODELS_DIR / directory / name).absolute()
    if not path.is_file():
        return None
    return Candidate(
        "local",
        path.as_uri(),
        PurePosixPath(name).name,
        directory,
        path.stat().st_size,
        sha256,
        label=f"{directory}/{name}",
    )


def model_list(query: Query, remote: Remote | None = None) -> list[Candidate]:
    """Entries of ComfyUI-Manager's curated model-list.json. A downloaded copy is
    revalidated once older than FINDER_CACHE_SECONDS, behind this source's breaker, and
    still answers, however old, while its site is down."""
    path = manager_data.manager_file(
        "model-list.json", max_age=settings.FINDER_CACHE_SECONDS, breaker="finder:model-list"
    )
    return list(read_model_list(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def read_model_list(path: str, mtime_ns: int) -> tuple[Candidate, ...]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = expect(expect(data, dict, "ComfyUI-Manager's model list").get("models"), list, path)
    candidates = (model_list_candidate(entry) for entry in entries if isinstance(entry, dict))
    return tuple(candidate for candidate in candidates if candidate)


def model_list_candidate(entry: dict) -> Candidate | None:
    url, filename = entry.get("url"), entry.get("filename")
    if not isinstance(url, str) or not isinstance(filename, str) or not url:
        return None
    if filename == "<huggingface>":  # ComfyUI-Manager's marker: the name is the URL's
        filename = unquote(PurePosixPath(urlsplit(url).path).name)
    save_path = str(entry.get("save_path") or "default")
    if save_path == "default":
        directory = folders.known(str(entry.get("type", ""))) or "etc"
    elif save_path.startswith("custom_nodes") or ".." in save_path:
        directory = ""
    else:
        directory = folders.canonical(save_path)
    return Candidate("model-list", url, filename, directory, label=str(entry.get("name", "")))


def templates(query: Query, remote: Remote | None = None) -> list[Candidate]:
    """Model links the official workflow templates carry (file name + folder -> URL, and a
    sha256 where a template gives one): the installed template package answers, no network."""
    return list(template_links())


@functools.cache
def template_links() -> tuple[Candidate, ...]:
    found: dict[tuple[str, str], Candidate] = {}
    for group in catalog.catalog():
        for template in group.templates:
            for model in template.models:
                if model.url and (model.directory, model.url) not in found:
                    name = PurePosixPath(model.name).name
                    label = f"official template {template.title}"
                    found[model.directory, model.url] = Candidate(
                        "templates", model.url, name, model.directory, None, model.sha256, label
                    )
    return tuple(found.values())


def huggingface(query: Query, remote: Remote) -> list[Candidate]:
    """Model files in the most downloaded repos whose id matches the name: the first search
    term that finds repos, page after page while no file matches (SEARCH_PAGES)."""
    base = settings.HF_ENDPOINT.rstrip("/")
    for term in query.search_terms(HF_SEARCHES):
        params = {"search": term, "limit": HF_TREES, "sort": "downloads", "direction": -1}
        found = hf_search(query, remote, base, f"{base}/api/models?{urlencode(params)}")
        if found is not None:
            return found
    return []


def hf_search(query: Query, remote: Remote, base: str, url: str) -> list[Candidate] | None:
    """The files of the repos on each page of one search, or None when it finds no repo."""
    found, pages = [], 0
    while url and pages < SEARCH_PAGES:
        listed, url = remote.get_page(url)
        items = [item for item in expect(listed, list, base) if isinstance(item, dict)]
        repos = [item["id"] for item in items if isinstance(item.get("id"), str)]
        if not repos:
            break
        found += [c for repo in repos[:HF_TREES] for c in hf_files(remote, base, repo)]
        pages += 1
        if any(query.matches(c.filename, c.sha256) for c in found):
            break
    return found if pages else None


def hf_files(remote: Remote, base: str, repo: str) -> list[Candidate]:
    tree = remote.get_json(f"{base}/api/models/{quote(repo)}/tree/main?recursive=true") or []
    entries = [
        e for e in expect(tree, list, base) if isinstance(e, dict) and e.get("type") == "file"
    ]
    return [hf_candidate(base, repo, entry) for entry in entries if entry.get("path")]


def hf_candidate(base: str, repo: str, entry: dict) -> Candidate:
    path = PurePosixPath(entry["path"])
    # Comfy-Org's repos say where a file goes: split_files/text_encoders/clip_l.safetensors
    directory = next((folders.known(part) for part in path.parts[:-1] if folders.known(part)), "")
    return Candidate(
        "huggingface",
        f"{base}/{quote(repo)}/resolve/main/{quote(str(path))}",
        path.name,
        directory,
        entry.get("size"),
        (entry.get("lfs") or {}).get("oid", ""),
        label=repo,
    )


def civitai(query: Query, remote: Remote) -> list[Candidate]:
    """The version whose file has the wanted sha256, then files of models found by name."""
    base = settings.CIVITAI_ENDPOINT.rstrip("/")
    found = []
    if query.sha256:
        version = remote.get_json(f"{base}/api/v1/model-versions/by-hash/{query.sha256}")
        if isinstance(version, dict):
            found += civitai_files(version, version.get("model") or {})
    for term in query.search_terms(CIVITAI_SEARCHES, joiner=" "):
        url = f"{base}/api/v1/models?{urlencode({'query': term, 'limit': SEARCH_LIMIT})}"
        pages = civitai_search(query, remote, base, url, found)
        if pages:
            break
    return found


def civitai_search(query: Query, remote: Remote, base: str, url: str, found: list) -> int:
    """Adds to `found` the files of each page of one search until one matches (by-hash
    finds count: they came first); returns how many pages had models."""
    pages = 0
    while url and pages < SEARCH_PAGES:
        page = expect(remote.get_json(url) or {}, dict, base)
        items = expect(page.get("items") or [], list, base)
        models = [item for item in items if isinstance(item, dict)]
        if not models:
            break
        for model in models:
            for version in (model.get("modelVersions") or [])[:CIVITAI_VERSIONS]:
                found += civitai_files(version, model)
        pages += 1
        if any(query.matches(c.filename, c.sha256) for c in found):
            break
        url = same_site((page.get("metadata") or {}).get("nextPage"), url)
    return pages


def civitai_files(version: dict, model: dict) -> list[Candidate]:
    label = f"{model.get('name', '')} · {version.get('name', '')}".strip(" ·")
    candidates = []
    for file in version.get("files") or []:
        url, name = file.get("downloadUrl"), file.get("name")
        if not url or not name:
            continue
        size_kb = file.get("sizeKB")
        directory = "vae" if file.get("type") == "VAE" else folders.known(model.get("type", ""))
        candidates.append(
            Candidate(
                "civitai",
                url,
                name,
                directory,
                round(size_kb * 1024) if size_kb else None,
                (file.get("hashes") or {}).get("SHA256", "").lower(),
                label=label,
            )
        )
    return candidates
