"""Model searches as jobs: the finder runs on the worker, never in a request.

An import queues one `find_model` job per missing model and shows the page at once; each
job's card fills with candidates as its search ends. The job's checkpoint holds the
result: {"candidates": [...], "sources": {source: "ok" | "unavailable: why"}}.

One search per (directory, name, sha256, url): a second import of the same model joins
the search under way, or reuses one that succeeded within FINDER_CACHE_SECONDS (the
window in which the finder's remote answers are cached anyway). A failed search is never
reused: importing again searches again. The link given with the model is part of the key
because it is a candidate of its own.
"""

import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from comfyhub.library import finder
from comfyhub.library.fetch import human
from comfyhub.library.jobs import SEARCH
from comfyhub.library.paths import BadInput
from recovery.choices import ACTIVE
from recovery.errors import JobError
from recovery.models import Category, Job, Status

KIND = SEARCH  # the job kind, named where it is registered (library/jobs.py)
MAX_CANDIDATES = 5
SOURCE_NAMES = {
    "url": "link in the workflow",
    "known": "a file imported before",
    "local": "your models folder",
    "model-list": "ComfyUI-Manager's model list",
    "templates": "an official template",
    "huggingface": "Hugging Face",
    "civitai": "CivitAI",
}


def params_for(model: dict) -> dict:
    """The job's params for a model requirement (as_json); `key` names the search."""
    fields = {f: model.get(f) or "" for f in ("directory", "name", "sha256", "url")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {**fields, "key": key}


def reusable(key: str, now=None) -> QuerySet:
    """Searches for `key` a new one would only repeat: under way, or recently succeeded."""
    recent = (now or timezone.now()) - timedelta(seconds=settings.FINDER_CACHE_SECONDS)
    under_way = Q(status__in=ACTIVE)
    fresh = Q(status=Status.SUCCEEDED, finished_at__gt=recent)
    return Job.objects.filter(under_way | fresh, kind=KIND, params__key=key)


def queue(model: dict) -> Job:
    """The search for `model` under way or recently done, else a new one for the worker.

    The look and the insert share one transaction: on SQLite (IMMEDIATE transactions)
    two imports at once cannot both miss and insert; elsewhere a rare twin search is
    harmless (both find the same)."""
    params = params_for(model)
    with transaction.atomic():
        job = reusable(params["key"]).first()
        if job is None:
            job = Job.objects.create(kind=KIND, params=params)
            job.dispatch()
    return job


def search(job: Job) -> None:
    """The task: ask the finder, keep the best http(s) candidates in the checkpoint.

    Fails (plain reason on the card) for a name the finder refuses, and when nothing was
    found because no remote source could be asked: "no candidates" would be a lie then.
    """
    p = job.params
    try:
        result = finder.find(p["name"], p["directory"], p["sha256"], p["url"])
    except BadInput as exc:
        raise JobError(str(exc), category=Category.VALIDATION) from None
    found = [c for c in result.candidates if c.url.startswith(("http://", "https://"))]
    candidates = [{**c.as_json(), "label": c.label} for c in found[:MAX_CANDIDATES]]
    down = unavailable(result.sources)
    if not candidates and down and len(down) == len(asked_remotely(result.sources)):
        raise JobError(
            "Nothing could be searched: " + "; ".join(down) + ". Paste a link if you know "
            "one, or import again later to search again.",
            category=Category.NETWORK,
        )
    job.checkpoint(candidates=candidates, sources=result.sources)


def asked_remotely(sources: dict) -> list[str]:
    return [name for name in sources if name in finder.REMOTE]


def unavailable(sources: dict) -> list[str]:
    """ "Hugging Face: <why>" for each remote source the search could not ask."""
    return [
        f"{SOURCE_NAMES.get(name, name)}: {state.removeprefix('unavailable: ')}"
        for name, state in sources.items()
        if name in finder.REMOTE and state != "ok"
    ]


def candidates(job: Job | None) -> list[dict]:
    """The search's candidates, best first; none until it succeeded."""
    if job is None or job.status != Status.SUCCEEDED:
        return []
    return job.checkpoint_data.get("candidates", [])


def candidate_label(candidate: dict) -> str:
    """ "file · where from · label · size", how a candidate reads on the import page."""
    parts = [candidate["filename"], SOURCE_NAMES.get(candidate["source"], candidate["source"])]
    if candidate.get("label") and candidate["label"] != candidate["filename"]:
        parts.append(candidate["label"])
    if candidate.get("size"):
        parts.append(human(candidate["size"]))
    return " · ".join(parts)


def card(job: Job | None) -> dict:
    """What a search's card shows: its candidates as radio choices (value, label, url),
    and the remote sources it could not ask."""
    return {
        "candidates": [
            {"value": f"c{n}", "label": candidate_label(c), "url": c["url"]}
            for n, c in enumerate(candidates(job))
        ],
        "unavailable": unavailable(job.checkpoint_data.get("sources", {})) if job else [],
    }
