"""What one page keeps live, and what changed since it last looked.

A page names everything live on it in its socket's URL (`page_url`): the unfinished jobs
whose cards it shows, the projects whose status badges it shows, and panels (the
attention banner, the downloads summary). `Watch.poll` answers the HTML fragments that
changed, each rooted at an element with `id` + `hx-swap-oob`, and nothing for the rest.

A poll costs the same few queries however many jobs are watched: one for the version
(`updated_at`) of every watched job, one loading the rows whose version differs from the
one last sent, one for the open circuit breakers, two per watched kind of object and one
per panel; only the changed cards are rendered, with their extra context loaded per kind
in one query (`cards_context`). Versions are compared, never "written after the last
look": a writer stamps `updated_at` before it waits for the database's write lock, so a
row can land with a stamp older than rows already seen. A job whose card went out
terminal drops out of the watch, and so does a deleted one.
"""

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode

from django.db import models
from django.template.loader import render_to_string, select_template
from django.utils import timezone

from comfyhub.context_processors import attention_counts
from comfyhub.live.broadcast import group_for
from recovery.models import BreakerState, CircuitBreaker, Job

# A page carries no versions, only when it was rendered: on the first look, rows stamped
# this long before then are sent again in case the page was read before they committed.
MARGIN = timedelta(seconds=2)
# A page lists at most 500 cards (library.views.LISTED); this leaves room, not abuse.
MOST_IDS = 2000

# Extra template context per job kind, registered by the app that owns the kind (e.g. a
# download card needs its Download row): {kind: callable(jobs) -> {job pk: dict}}.
CONTEXT: dict[str, Callable[[list[Job]], dict[int, dict]]] = {}
# Page-wide fragments: {name: callable() -> (version, html)}; the banner is one.
PANELS: dict[str, Callable[[], tuple[object, str]]] = {}
# Objects other than jobs whose fragments a page shows: {name: (model with an
# `updated_at`, callable(object) -> html)}.
OBJECTS: dict[str, tuple[type[models.Model], Callable[[models.Model], str]]] = {}


def cards_context(kind: str):
    """Register the context of a batch of `kind` cards (one query for all of them)."""

    def register(func):
        CONTEXT[kind] = func
        return func

    return register


def card_context(kind: str):
    """Register the context of one `kind` card; for kinds a page shows a few of."""

    def register(func: Callable[[Job], dict]):
        CONTEXT[kind] = lambda jobs: {job.pk: func(job) for job in jobs}
        return func

    return register


def panel(name: str):
    def register(func):
        PANELS[name] = func
        return func

    return register


def watched_object(name: str, model: type[models.Model]):
    """Register the fragment of one `model` object a page shows as `name`."""

    def register(func):
        OBJECTS[name] = (model, func)
        return func

    return register


def page_url(
    jobs: Iterable[int] = (), panels: Iterable[str] = ("banner",), next: str = "", **objects
) -> str:
    """The page socket's URL for what a page shows live. `since` is now: on connect the
    socket sends what was written after the page was rendered (and in the MARGIN before).
    `next`: where the forms of the cards the socket sends go back to, as the page's own."""
    query = {"since": f"{timezone.now().timestamp():.6f}"}
    if next:
        query["next"] = next
    for name, pks in {"jobs": jobs, **objects}.items():
        if pks := ",".join(str(pk) for pk in pks):
            query[name] = pks
    if names := ",".join(panels):
        query["panels"] = names
    return f"/ws/page/?{urlencode(query, safe=',')}"


def render_cards(jobs: list[Job], csrf_token: str, next: str = "") -> list[str]:
    by_kind = defaultdict(list)
    for job in jobs:
        by_kind[job.kind].append(job)
    fragments = []
    for kind, batch in by_kind.items():
        template = select_template([f"live/{kind}.html", "live/job.html"])
        extra = CONTEXT[kind](batch) if kind in CONTEXT else {}
        for job in batch:
            context = {"job": job, "oob": True, "csrf_token": csrf_token, "next": next}
            fragments.append(template.render({**context, **extra.get(job.pk, {})}))
    return fragments


def open_breakers() -> dict[str, tuple]:
    rows = CircuitBreaker.objects.exclude(state=BreakerState.CLOSED)
    return {key: rest for key, *rest in rows.values_list("key", "state", "opened_at")}


def row_id(text: str) -> int:
    """A primary key from a URL; ValueError beyond what the database holds (a bigger one
    would raise OverflowError in every look, not once here)."""
    pk = int(text)
    if not 1 <= pk < 2**63:
        raise ValueError(f"no row has the id {text}")
    return pk


def changed(model: type[models.Model], versions: dict[int, object], rendered: datetime) -> list:
    """The pks of `versions` whose row differs from the version last sent (None: the one
    the page was rendered with, i.e. anything stamped at or after `rendered`), in one
    query of every watched row's version. Unchanged versions are noted; deleted rows
    drop out."""
    now = dict(model.objects.filter(pk__in=list(versions)).values_list("pk", "updated_at"))
    for pk in [pk for pk in versions if pk not in now]:
        del versions[pk]
    fresh = []
    for pk, version in now.items():
        if versions[pk] is None and version < rendered:
            versions[pk] = version  # what the page shows; a later write differs from it
        elif versions[pk] != version:
            fresh.append(pk)
    return fresh


class Watch:
    """The live state one page socket holds; `poll` runs in a thread (it queries)."""

    def __init__(
        self, jobs, objects, panels, since: datetime, csrf_token: str = "", next: str = ""
    ):
        # {pk: version last sent}; None until the first look sees what the page shows.
        self.jobs: dict[int, object] = dict.fromkeys(jobs)
        self.objects = {name: dict.fromkeys(pks) for name, pks in objects.items()}
        self.panels: dict[str, object] = dict.fromkeys(panels)
        self.rendered = since - MARGIN
        self.breakers: dict[str, tuple] | None = None
        self.csrf_token = csrf_token
        self.next = next

    @classmethod
    def from_query(cls, query: bytes, csrf_token: str = "") -> "Watch":
        """The watch a page's socket URL asks for; ValueError on anything malformed."""
        fields = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        since = datetime.fromtimestamp(float(fields.pop("since", "0")), tz=UTC)
        panels = [name for name in fields.pop("panels", "").split(",") if name]
        next = fields.pop("next", "")
        if next and not (next.startswith("/") and next[1:2] not in ("/", "\\")):
            raise ValueError("next is a path on this site")
        if unknown := set(panels) - set(PANELS) or set(fields) - {"jobs", *OBJECTS}:
            raise ValueError(f"nothing live is called {', '.join(sorted(unknown))}")
        ids = {
            name: [row_id(pk) for pk in value.split(",") if pk] for name, value in fields.items()
        }
        if sum(len(pks) for pks in ids.values()) > MOST_IDS:
            raise ValueError(f"a page watches at most {MOST_IDS} objects")
        jobs = ids.pop("jobs", [])
        return cls(jobs, ids, panels, since, csrf_token, next)

    @property
    def groups(self) -> list[str]:
        """The channel-layer groups whose hints should wake this watch early."""
        return [group_for("job", pk) for pk in list(self.jobs)]  # list(): a look may be on

    def poll(self) -> list[str]:
        """The fragments that changed since the last poll (on the first: since the page was
        rendered)."""
        return self.changed_jobs() + self.changed_objects() + self.changed_panels()

    def changed_jobs(self) -> list[str]:
        if not self.jobs:
            return []
        pks = changed(Job, self.jobs, self.rendered)
        fresh = {job.pk: job for job in Job.objects.filter(pk__in=pks)} if pks else {}
        fresh.update(self.behind_changed_breakers(fresh))
        self.remember(fresh.values())
        return render_cards(list(fresh.values()), self.csrf_token, self.next)

    def remember(self, sent: Iterable[Job]) -> None:
        """Note the versions sent; a finished job's card goes out once, then drops out."""
        for job in sent:
            self.jobs[job.pk] = job.updated_at
            if job.is_terminal:
                del self.jobs[job.pk]

    def behind_changed_breakers(self, fresh: dict[int, Job]) -> dict[int, Job]:
        """Jobs whose host's breaker opened, re-opened or closed: their cards name it."""
        now, before = open_breakers(), self.breakers
        self.breakers = now
        if before is None:
            return {}
        keys = {key for key in now.keys() | before.keys() if now.get(key) != before.get(key)}
        if not keys:
            return {}
        rows = Job.objects.filter(pk__in=list(self.jobs), breaker_key__in=keys)
        return {job.pk: job for job in rows.exclude(pk__in=list(fresh))}

    def changed_objects(self) -> list[str]:
        fragments = []
        for name, versions in self.objects.items():
            model, render = OBJECTS[name]
            if not versions or not (pks := changed(model, versions, self.rendered)):
                continue
            for obj in model.objects.filter(pk__in=pks):
                versions[obj.pk] = obj.updated_at
                fragments.append(render(obj))
        return fragments

    def changed_panels(self) -> list[str]:
        fragments = []
        for name, seen in self.panels.items():
            version, html = PANELS[name]()
            if version != seen:
                self.panels[name] = version
                fragments.append(html)
        return fragments


@panel("banner")
def banner() -> tuple[object, str]:
    counts = attention_counts()
    html = render_to_string("recovery/banner.html", {"attention": counts, "oob": True})
    return tuple(sorted(counts.items())), html
