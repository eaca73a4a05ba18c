from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from recovery import metrics


@require_GET
def metrics_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(metrics.compute())
