from django.contrib import messages
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from recovery import metrics
from recovery.models import USER_ACTIONS, Job


@require_GET
def metrics_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(metrics.compute())


def act_on(request: HttpRequest, job: Job, action: str) -> None:
    """A page's job button: carry out `action` (Job.act), say so when the job had already
    moved on, and answer 404 for an action no button offers."""
    if action not in USER_ACTIONS:
        raise Http404(f"No action {action!r}")
    if not job.act(action):
        status = job.get_status_display().lower()
        messages.info(request, f"Nothing changed: {job.kind} #{job.pk} is {status} now.")
