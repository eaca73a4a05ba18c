from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from recovery.engine import enqueue
from recovery.models import Job, WorkerHeartbeat


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        worker_ok = WorkerHeartbeat.alive(settings.WORKER_STALE_SECONDS)
    except Exception:
        body = {"status": "error", "database": "error", "worker": "down"}
        body["channel_layer"] = type(get_channel_layer()).__name__
        return JsonResponse(body, status=503)
    return JsonResponse(
        {
            "status": "ok",
            "database": "ok",
            "worker": "ok" if worker_ok else "down",
            "channel_layer": type(get_channel_layer()).__name__,
        }
    )


@require_http_methods(["GET", "POST"])
def system(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        queued = enqueue("selftest", {"step_seconds": 0.5})
        return redirect(f"/system/?job={queued.pk}#job-{queued.pk}")
    ctx = {
        "jobs": Job.objects.filter(kind="selftest")[:5],
        "worker_ok": WorkerHeartbeat.alive(settings.WORKER_STALE_SECONDS),
        "channel_layer": type(get_channel_layer()).__name__,
        "settings": settings,
    }
    return render(request, "system.html", ctx)


@require_GET
def planned(request: HttpRequest, title: str, issue: int) -> HttpResponse:
    return render(request, "planned.html", {"title": title, "issue": issue})
