"""The "something needs you" banner, on every page.

A job needs the user when waiting will not fix it: it failed (including a missing or
refused token, which fails at once), it paused because the disk is full, or it waits with
an auth error (only with a policy that retries auth). Jobs that retry on their own —
backoff, Retry-After, an open circuit breaker — and jobs the user paused do not count:
the Recovery page lists them, the banner stays quiet. Nor does a failed model search: it
says why on the import page that asked, where a link can be pasted instead, and importing
again searches again; there is nothing to fix elsewhere.
"""

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from recovery.models import Category, Job, Status

NEEDS_USER = (
    Q(status=Status.FAILED)
    | Q(status=Status.PAUSED, error_category=Category.DISK_FULL)
    | Q(status=Status.WAITING, error_category=Category.AUTH)
)


def needing_user() -> QuerySet:
    # A failed search is not the user's to fix (import again searches again). Imported
    # here: the searches module loads the finder, which a download command never needs.
    from comfyhub.library.jobs import SEARCH

    return Job.objects.filter(NEEDS_USER).exclude(kind=SEARCH)


def attention_counts() -> dict:
    """One aggregate query: how many jobs need the user, and how many of them for a token
    or for disk space (what the banner names)."""
    return needing_user().aggregate(
        total=Count("id"),
        auth=Count("id", filter=Q(error_category=Category.AUTH)),
        disk_full=Count("id", filter=Q(error_category=Category.DISK_FULL)),
    )


def attention(request: HttpRequest) -> dict:
    # Lazy: pages that never show the banner (admin, login) never run the query.
    return {"attention": SimpleLazyObject(attention_counts)}


def live(request: HttpRequest) -> dict:
    """The page socket's URL when a view names nothing live: the banner alone. /recovery/
    lists what the banner would say, and an anonymous visitor's socket would be refused."""
    from comfyhub.live.page import page_url  # it renders the banner with attention_counts

    user = getattr(request, "user", None)
    if request.path == "/recovery/" or (
        settings.LOGIN_REQUIRED and not (user and user.is_authenticated)
    ):
        return {"live": ""}
    return {"live": page_url()}
