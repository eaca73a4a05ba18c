"""Where to get a model file: `find(name, directory, sha256, url)`.

Sources are asked in this order: the link given with the requirement (`url`), what
imported workflows and launcher.json files declared (`known`, by name and by sha256; see
`knowledge`), the local models folder (by name and by sha256), ComfyUI-Manager's model
list, the official templates' links, Hugging Face (repo search + file trees) and CivitAI
(by-hash when a sha256 is known, then search), the last two reading later result pages
while no file matches. "known" comes after the given link so that a link both give keeps
the given link's points (merged candidates keep the first source's), and before the rest
so that it wins their ties. Every source is asked: the remote ones' answers are cached,
and one that is down only says so in `Result.sources`.

Candidates with the same URL are merged (blanks filled from later sources), scored and
returned best first. A source that fails, or whose breaker is open, is named in
`Result.sources` as "unavailable: <why>"; it never fails the search. Remote answers are
cached in the database (`FinderAnswer`, FINDER_CACHE_SECONDS) and each request waits at most
FINDER_TIMEOUT seconds. ComfyUI-Manager's model list is a file instead (`manager_data`),
revalidated once older than FINDER_CACHE_SECONDS, behind its own breaker.

Score, higher is better (name points: only the best of the three applies):
    +100     its sha256 is the wanted one; -50 when both are known and differ
    +60      the same file name, ignoring case
    +50      the same normalised name: case, extension and separators (- _ . space) ignored
    +20..40  a partial name: 40 x shared words / all words, when at least half are shared
    +10      the same ComfyUI folder, aliases included (unet = diffusion_models); -5 another
    +40      the link given with the requirement
A candidate with neither name nor hash evidence is dropped (the given link never is), and
so is a file that is neither a model file nor of the wanted file's type. Ties keep source
order, then each source's own order (Hugging Face repos by downloads).
"""

import logging
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import httpx
from django.conf import settings
from django.utils import timezone

from comfyhub.library import finder_sources, folders
from comfyhub.library.finder_sources import (
    MODEL_SUFFIXES,
    Candidate,
    Query,
    Remote,
    extension,
    normalise,
)
from comfyhub.library.models import FinderAnswer
from comfyhub.library.paths import BadInput, check_sha256
from recovery.classify import in_brief

__all__ = ["BadInput", "Candidate", "Result", "find"]

logger = logging.getLogger(__name__)

SOURCES = (
    ("url", finder_sources.embedded),
    ("known", finder_sources.known),
    ("local", finder_sources.local),
    ("model-list", finder_sources.model_list),
    ("templates", finder_sources.templates),
    ("huggingface", finder_sources.huggingface),
    ("civitai", finder_sources.civitai),
)
# Sources asked through a `Remote`; the model list goes through `manager_data` instead.
REMOTE = frozenset({"huggingface", "civitai"})
ORDER = [name for name, _ in SOURCES]
MAX_CANDIDATES = 20

HASH_MATCH, HASH_CONFLICT = 100, -50
SAME_FILENAME, SAME_NAME, PARTIAL_NAME = 60, 50, 40
SAME_FOLDER, OTHER_FOLDER = 10, -5
DECLARED = 40


@dataclass
class Result:
    query: str
    candidates: list[Candidate]
    sources: dict[str, str]  # source name -> "ok" | "unavailable: <why>"

    def as_json(self) -> dict:
        return {
            "query": self.query,
            "candidates": [candidate.as_json() for candidate in self.candidates],
            "sources": dict(self.sources),
        }


def find(name: str, directory: str = "", sha256: str = "", url: str = "") -> Result:
    """Candidates for the file `name` (as a workflow names it), best first.

    Raises BadInput for an empty name, a name or directory with `..` or an absolute path,
    or a sha256 that is not 64 hex digits. A bad `url` only makes the "url" source
    unavailable: it is a hint, not the question.
    """
    query = Query(
        relative(name, "model name"),
        relative(directory, "directory") if directory else "",
        check_sha256(sha256),
        url.strip(),
    )
    now = timezone.now()
    FinderAnswer.objects.expired(now).delete()
    found, status = [], {}
    with httpx.Client(timeout=settings.FINDER_TIMEOUT, follow_redirects=True) as client:
        for source, ask in SOURCES:
            if source != "url" or query.url:
                remote = Remote(source, client, now) if source in REMOTE else None
                found += consult(source, ask, query, remote, status)
    return Result(query.name, rank(found, query), status)


def relative(value: str, what: str) -> str:
    value = value.strip().replace("\\", "/")
    if not value or "\x00" in value:
        raise BadInput(f"The {what} is empty or contains a NUL byte.")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~") or re.match("[A-Za-z]:", value):
        raise BadInput(f"The {what} {value!r} must be relative, not an absolute path.")
    if ".." in path.parts:
        raise BadInput(f"The {what} {value!r} may not contain '..'.")
    return str(path)


def consult(source: str, ask, query: Query, remote: Remote | None, status: dict) -> list:
    try:
        found = ask(query, remote)
    except Exception as exc:
        reason = remote.failure(exc) if remote else in_brief(exc)
        status[source] = f"unavailable: {reason}"
        logger.warning("Finder source %s is unavailable: %s", source, reason)
        return []
    status[source] = "ok"
    return found


def rank(found: list[Candidate], query: Query) -> list[Candidate]:
    scored = []
    for candidate in merge_by_url(found):
        points = score(candidate, query)
        if points is not None:
            scored.append(replace(candidate, score=points))
    scored.sort(key=lambda c: (-c.score, ORDER.index(c.source)))
    return scored[:MAX_CANDIDATES]


def merge_by_url(found: list[Candidate]) -> list[Candidate]:
    """One candidate per URL: the first source's, with blanks filled from the others
    (ComfyUI-Manager knows the folder of a Hugging Face file whose sha256 HF knows)."""
    merged: dict[str, Candidate] = {}
    for candidate in found:
        kept = merged.get(candidate.url)
        merged[candidate.url] = candidate if kept is None else fill_blanks(kept, candidate)
    return list(merged.values())


def fill_blanks(kept: Candidate, other: Candidate) -> Candidate:
    return replace(
        kept,
        directory=kept.directory or other.directory,
        size=other.size if kept.size is None else kept.size,
        sha256=kept.sha256 or other.sha256,
    )


def score(candidate: Candidate, query: Query) -> int | None:
    """The candidate's points (see the module docstring), or None when it is irrelevant."""
    declared = candidate.source == "url"
    kind = extension(candidate.filename)
    if not declared and kind not in MODEL_SUFFIXES and kind != extension(query.filename):
        return None
    hashed = hash_points(candidate.sha256, query.sha256)
    named = name_points(candidate.filename, query.filename)
    if not (declared or named or hashed > 0):
        return None
    placed = folder_points(candidate.directory, query.directory)
    return hashed + named + placed + (DECLARED if declared else 0)


def hash_points(have: str, want: str) -> int:
    if not (have and want):
        return 0
    return HASH_MATCH if have.lower() == want.lower() else HASH_CONFLICT


def name_points(have: str, want: str) -> int:
    if have.lower() == want.lower():
        return SAME_FILENAME
    have, want = normalise(have), normalise(want)
    if have == want:
        return SAME_NAME
    words, wanted = set(have.split()), set(want.split())
    overlap = len(words & wanted) / len(words | wanted) if words | wanted else 0
    return round(PARTIAL_NAME * overlap) if overlap >= 0.5 else 0


def folder_points(have: str, want: str) -> int:
    if not (have and want):
        return 0
    return SAME_FOLDER if folders.canonical(have) == folders.canonical(want) else OTHER_FOLDER


def mirrors_of(chosen: dict, candidates: list[dict]) -> list[str]:
    """The chosen candidate's URL, then those of the other candidates (as_json) that are
    the same file: the download's sources, in order (see library/mirrors.py).

    Only with a known sha256 for the chosen one (the download's expected sha256, which
    verifies whatever a mirror serves): without it, a file of the same size and name
    elsewhere may be another file, and nothing would notice."""
    if not chosen.get("sha256"):
        return [chosen["url"]]
    same = [c["url"] for c in candidates if c is not chosen and same_file(chosen, c)]
    return list(dict.fromkeys([chosen["url"], *same]))


def same_file(one: dict, other: dict) -> bool:
    """The same sha256; or, when either hash is unknown, the same size and file name.
    Two known hashes that differ are two files, whatever their names."""
    if one.get("sha256") and other.get("sha256"):
        return one["sha256"] == other["sha256"]
    return bool(one.get("size")) and (one.get("size"), one.get("filename")) == (
        other.get("size"),
        other.get("filename"),
    )
