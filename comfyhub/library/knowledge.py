"""What imported files taught us: every model a workflow or launcher.json declares with a
download link (name, folder, url, and sha256 and size when given) becomes a `KnownModel`,
which the finder's "known" source searches first (right after the link given with the
requirement itself: see comfyhub.library.finder).

Only entries with an http(s) link are kept, and only with a well-formed sha256 when they
give one: a bad entry is the workflow's problem (its analysis reports it), so it is skipped
here without a word. A link declared again keeps its row: newer non-blank facts replace
older ones, blanks never erase them.
"""

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from comfyhub.library import sources
from comfyhub.library.models import KnownModel
from comfyhub.library.paths import BadInput, check_sha256, check_size, check_url
from comfyhub.workflows import parse
from comfyhub.workflows.analyze import ModelRequirement, required_models

ORIGIN_MAX, URL_MAX, NAME_MAX, DIRECTORY_MAX = (
    KnownModel._meta.get_field(field).max_length for field in ("origin", "url", "name", "directory")
)


def origin(format: str, label: str) -> str:
    """ "launcher <label>" for a launcher.json, else "workflow <label>" (the file's name)."""
    kind = "launcher" if format == parse.Format.LAUNCHER else "workflow"
    return f"{kind} {label}"[:ORIGIN_MAX]


def learn(models: Iterable[ModelRequirement], origin: str) -> int:
    """Remember each model's links (its `url` and a launcher's alternatives, `sources`);
    returns how many links were learnt or refreshed."""
    learnt = 0
    now = timezone.now()
    for model in models:
        facts = declared(model)
        if facts is None:
            continue
        for url in links(model):
            remember(model, url, {**facts, "origin": origin[:ORIGIN_MAX], "seen_at": now})
            learnt += 1
    return learnt


def learn_json(data: object, label: str) -> int:
    """learn() what a workflow or launcher.json (its parsed JSON) declares; `label` names
    the file. Raises JobError for a file that is not a workflow, like parse.from_json."""
    workflow = parse.from_json(data)
    return learn(required_models(workflow), origin(workflow.format, label))


def declared(model: ModelRequirement) -> dict | None:
    """{sha256, size} as the file gives them, or None when its sha256 is malformed (or its
    name too long to keep)."""
    if len(model.name) > NAME_MAX or len(model.directory) > DIRECTORY_MAX:
        return None
    sha256 = model.hash if model.hash_type.lower() in ("", "sha256") else ""
    try:
        sha256 = check_sha256(sha256)
        size = check_size(model.size)
    except BadInput:
        return None
    return {"sha256": sha256, "size": size}


def links(model: ModelRequirement) -> list[str]:
    """The model's http(s) links, Hugging Face pages turned into their files."""
    found = []
    for url in dict.fromkeys([model.url, *model.sources]):
        try:
            url = sources.normalise(check_url(url or ""))
        except BadInput:
            continue
        if len(url) <= URL_MAX:
            found.append(url)
    return list(dict.fromkeys(found))


def remember(model: ModelRequirement, url: str, facts: dict) -> None:
    key = {"directory": model.directory, "name": model.name, "url": url}
    news = {field: value for field, value in facts.items() if value not in ("", None)}
    try:
        with transaction.atomic():
            _, created = KnownModel.objects.get_or_create(**key, defaults=facts)
    except IntegrityError:  # another import inserted the same link first
        created = False
    if not created:
        KnownModel.objects.filter(**key).update(**news)
