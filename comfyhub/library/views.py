from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from comfyhub.library.forms import DownloadForm
from comfyhub.library.models import Download
from recovery.models import Job

ACTIONS = {"pause": Job.pause, "resume": Job.resume, "cancel": Job.cancel, "retry": Job.retry_now}


@require_http_methods(["GET", "POST"])
def downloads(request: HttpRequest) -> HttpResponse:
    form = DownloadForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        Download.objects.queue(**form.cleaned_data)
        return redirect("downloads")
    listed = Download.objects.select_related("job")[:500]
    status = 400 if request.method == "POST" else 200
    return render(
        request, "library/downloads.html", {"form": form, "downloads": listed}, status=status
    )


@require_POST
def download_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    download = get_object_or_404(Download.objects.select_related("job"), pk=pk)
    if action not in ACTIONS:
        raise Http404(f"No action {action!r}")
    ACTIONS[action](download.job)
    return redirect("downloads")
