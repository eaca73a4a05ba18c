from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from comfyhub.library import store
from comfyhub.library.forms import DownloadFilter, DownloadForm
from comfyhub.library.models import Download, with_breakers
from comfyhub.live.page import page_url
from recovery.models import Status
from recovery.views import act_on

# Newest first; beyond this the page says so and the filters narrow it down.
LISTED = 500
# What a card shows (templates/live/download.html): loading only these keeps 500 rows
# fast. A field missing here costs a query per card; the view tests count queries.
CARD_FIELDS = [
    "dest",
    "host",
    "sources",
    "source_index",
    "bytes_done",
    "total_bytes",
    "speed",
    "eta_seconds",
    "connections",
    "job__kind",
    "job__status",
    "job__attempt",
    "job__max_attempts",
    "job__transient_failures",
    "job__next_attempt_at",
    "job__error_category",
    "job__error_message",
    "job__error_detail",
]


@require_http_methods(["GET", "POST"])
def downloads(request: HttpRequest) -> HttpResponse:
    form = DownloadForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        Download.objects.queue(**form.cleaned_data)
        return redirect("downloads")
    shown = DownloadFilter(request.GET)
    bad = request.method == "POST" or not shown.is_valid()
    return render(
        request, "library/downloads.html", listing(form, shown), status=400 if bad else 200
    )


def listing(form: DownloadForm, shown: DownloadFilter) -> dict:
    """The page's context: at most LISTED downloads (one query), a count per status, the
    open breakers, the totals in flight, the one-copy store's figures (one stat per entry,
    no query) and the page socket watching the unfinished."""
    status = shown.cleaned_data["status"] if shown.is_valid() else ""
    rows = Download.objects.select_related("job").only(*CARD_FIELDS)
    listed = with_breakers(
        list((rows.filter(job__status=status) if status else rows)[: LISTED + 1])
    )
    counts = dict(Download.objects.values_list("job__status").annotate(n=Count("id")).order_by())
    tabs = [("", "All", sum(counts.values()))]
    tabs += [(value, label, counts.get(value, 0)) for value, label in Status.choices]
    return {
        "form": form,
        "filter": shown,
        "status": status,
        "tabs": tabs,
        "downloads": listed[:LISTED],
        "more": len(listed) > LISTED,
        "store": store.stats(),
        "glance": Download.objects.at_a_glance(),
        "live": page_url(unfinished(listed[:LISTED]), panels=["banner", "downloads"]),
    }


def unfinished(downloads: list[Download]) -> list[int]:
    return [download.job_id for download in downloads if not download.job.is_terminal]


@require_POST
def download_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    download = get_object_or_404(Download.objects.select_related("job"), pk=pk)
    act_on(request, download.job, action)
    return redirect("downloads")
