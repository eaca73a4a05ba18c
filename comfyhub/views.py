from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from comfyhub.context_processors import needing_user
from comfyhub.library import sealing
from comfyhub.library.bandwidth import current_limit
from comfyhub.library.fetch import human
from comfyhub.library.forms import BandwidthForm, TokenForm
from comfyhub.library.models import Preference, PreferenceName, StoredToken, TokenName, mask
from comfyhub.live.page import page_url
from recovery import metrics
from recovery.engine import enqueue
from recovery.models import BreakerState, Category, CircuitBreaker, Job, Status, WorkerHeartbeat
from recovery.policy import DEFAULTS, policy_for
from recovery.views import act_on

# Rows per list on the Recovery page: a page, not a dump (the admin lists everything).
LISTED = 200


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
    jobs = list(Job.objects.filter(kind="selftest")[:5])
    ctx = {
        "jobs": jobs,
        "live": page_url(job.pk for job in jobs if not job.is_terminal),
        "worker_ok": WorkerHeartbeat.alive(settings.WORKER_STALE_SECONDS),
        "channel_layer": type(get_channel_layer()).__name__,
        "settings": settings,
    }
    return render(request, "system.html", ctx)


@require_GET
def recovery(request: HttpRequest) -> HttpResponse:
    needs_you = needing_user().select_related("download").order_by("-updated_at")
    waiting = Job.objects.filter(status=Status.WAITING).exclude(pk__in=needing_user())
    breakers = CircuitBreaker.objects.exclude(state=BreakerState.CLOSED).order_by("key")
    ctx = {
        "needs_you": needs_you[:LISTED],
        "waiting": waiting.select_related("download").order_by("next_attempt_at")[:LISTED],
        "breakers": breakers,
        "metrics": metrics.compute(),
    }
    return render(request, "recovery/recovery.html", ctx)


@require_POST
def job_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    act_on(request, get_object_or_404(Job, pk=pk), action)
    return redirect("recovery")


@sensitive_post_parameters("token")
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        messages.success(request, form.save())
        return redirect("settings")
    status = 400 if request.method == "POST" else 200
    return render(request, "settings/settings.html", settings_context(form), status=status)


@require_POST
def bandwidth_setting(request: HttpRequest) -> HttpResponse:
    form = BandwidthForm(request.POST)
    if form.is_valid():
        messages.success(request, form.save())
        return redirect("settings")
    context = settings_context(TokenForm(), form)
    return render(request, "settings/settings.html", context, status=400)


def settings_context(form: TokenForm, bandwidth: BandwidthForm | None = None) -> dict:
    # name -> token, or None for a token no key opens any more
    stored = {token.name: token.value for token in StoredToken.objects.all()}
    return {
        "form": form,
        "bandwidth": bandwidth_row(bandwidth or BandwidthForm()),
        "tokens": [token_row(name, stored, form) for name in TokenName],
        "token_key": settings.TOKEN_KEY_FILE if sealing.keys_in_file() else "COMFYHUB_TOKEN_KEY",
        "policies": [
            (Category(c).label, policy_for("", c)) for c in DEFAULTS if c != Category.CANCELLED
        ],
        # Values, not the settings object: this template must have no path to a secret.
        "limits": {
            "max": settings.DOWNLOADS_MAX,
            "per_host": settings.CONNECTIONS_PER_HOST,
            "connections": settings.DOWNLOAD_CONNECTIONS,
            "stall": settings.STALL_TIMEOUT,
            "backoff_scale": settings.RECOVERY_BACKOFF_SCALE,
            "breaker_threshold": settings.RECOVERY_BREAKER_THRESHOLD,
            "breaker_cooldown": settings.RECOVERY_BREAKER_COOLDOWN,
        },
        "folders": [
            ("Data", "COMFYHUB_DATA_DIR", settings.DATA_DIR),
            ("Models", "COMFYHUB_MODELS_DIR", settings.MODELS_DIR),
            ("Projects", "COMFYHUB_PROJECTS_DIR", settings.PROJECTS_DIR),
        ],
    }


def bandwidth_row(form: BandwidthForm) -> dict:
    limit = current_limit()
    here = Preference.objects.value_of(PreferenceName.BANDWIDTH_LIMIT) is not None
    return {
        "form": form,
        "limit": f"{human(limit)}/s" if limit else "",
        "source": "here" if here else ("environment" if settings.BANDWIDTH_LIMIT else ""),
    }


def token_row(name: TokenName, stored: dict, posted: TokenForm) -> dict:
    """What the page may know of a token: whether and where it is set, masked."""
    environment = getattr(settings, name)
    mine = posted.is_bound and posted.data.get("name") == name
    return {
        "name": name.value,
        "label": name.label,
        "stored": mask(stored[name]) if stored.get(name) else "",
        "unreadable": name in stored and stored[name] is None,
        "environment": mask(environment) if environment else "",
        "form": posted if mine else TokenForm(initial={"name": name}, auto_id=f"{name.value}-%s"),
    }
