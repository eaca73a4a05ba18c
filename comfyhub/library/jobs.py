from django.template.loader import render_to_string

from comfyhub.library import mirrors
from comfyhub.library.fetch import fetch
from comfyhub.library.models import Download, with_breakers
from comfyhub.live.page import card_context, cards_context, panel
from recovery.models import Category, Job
from recovery.registry import recoverable


def discard_partial(job: Job) -> None:
    """Cancelling a download deletes its .part; pausing keeps it. A .part that a newer
    download of the same file holds now is that one's, and stays."""
    download = Download.objects.filter(job=job).first()
    if download and not download.taken_by_another():
        download.discard_partial()


# A drop mid-file is routine: come back within a second (the worker retries that in
# place). Progress resets the count, so only a connection that stays dead gives up.
QUICK = {"base": 0.25, "jitter": 0.25, "max_attempts": 10}


@cards_context("download")
def download_cards(jobs: list[Job]) -> dict[int, dict]:
    """Each card's Download row and its host's breaker: two queries for any number."""
    downloads = with_breakers(list(Download.objects.filter(job__in=jobs)))
    return {download.job_id: {"download": download} for download in downloads}


@panel("downloads")
def at_a_glance() -> tuple[object, str]:
    """The downloads page's summary. Its version is its HTML: it goes out when what it
    says changed, not for every byte."""
    glance = Download.objects.at_a_glance()
    html = render_to_string("library/_glance.html", {"glance": glance, "oob": True})
    return html, html


@recoverable(
    "download",
    on_cancel=discard_partial,
    reroute=mirrors.reroute,
    policies={Category.NETWORK: QUICK, Category.TIMEOUT: QUICK},
)
def download(job: Job) -> None:
    fetch(job)


# The finder (and the workflow catalog it reads) loads with the first search, not with
# every command: `manage.py download` never needs it.
SEARCH = "find_model"


# A search with every remote source down fails at once with the reason: the user is on
# the import page now, can paste a link, and an import later searches again.
@recoverable(
    SEARCH,
    policies={c: {"max_attempts": 1} for c in (Category.NETWORK, Category.TIMEOUT)},
)
def find_model(job: Job) -> None:
    from comfyhub.library import searches

    searches.search(job)


@card_context(SEARCH)
def search_card(job: Job) -> dict:
    from comfyhub.library import searches

    return searches.card(job)
