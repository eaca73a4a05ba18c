"""Admin for inspecting recovery records.

Rows are written by the engine, so the admin shows them and offers the same user actions
the pages do (retry now, cancel) rather than letting anyone edit status or lease fields by
hand. Jobs are created by the code that owns their kind, never from the admin. Deleting
stays allowed: it is how an operator forgets a stale breaker or heartbeat.
"""

from django.contrib import admin
from django.http import HttpRequest

from recovery import metrics
from recovery.models import Attempt, CircuitBreaker, Job, WorkerHeartbeat

ATTEMPT_FIELDS = (
    "number",
    "outcome",
    "category",
    "message",
    "started_at",
    "finished_at",
    "duration",
    "progress_from",
    "progress_to",
    "owner",
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = readonly_fields = ATTEMPT_FIELDS
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "status",
        "attempt",
        "error_category",
        "progress_summary",
        "next_attempt_at",
        "updated_at",
    )
    list_filter = ("status", "error_category", "kind")
    search_fields = ("kind", "error_message", "breaker_key", "lease_owner")
    actions = ("retry_now", "cancel")
    inlines = (AttemptInline,)
    fieldsets = (
        (None, {"fields": ("kind", "status", "params", "requested")}),
        ("Progress", {"fields": ("progress_done", "progress_total", "progress_unit")}),
        ("Error", {"fields": ("error_category", "error_message", "error_detail")}),
        (
            "Retries",
            {
                "fields": (
                    "attempt",
                    "max_attempts",
                    "transient_failures",
                    "integrity_restarts",
                    "lost_attempts",
                    "next_attempt_at",
                    "breaker_key",
                )
            },
        ),
        ("Lease", {"fields": ("lease_owner", "lease_expires_at", "dispatched_at")}),
        ("Checkpoint", {"fields": ("checkpoint_data",)}),
        ("Times", {"fields": ("created_at", "started_at", "updated_at", "finished_at")}),
    )
    # Only the retry budget is safe to edit by hand; everything else is the engine's.
    readonly_fields = tuple(
        name for _, section in fieldsets for name in section["fields"] if name != "max_attempts"
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        numbers = metrics.compute()
        rows = [*numbers["kinds"].items(), ("All kinds", numbers["totals"])]
        extra_context = {**(extra_context or {}), "metrics": numbers, "metrics_rows": rows}
        return super().changelist_view(request, extra_context)

    @admin.display(description="Progress")
    def progress_summary(self, job: Job) -> str:
        if job.percent is None:
            return f"{job.progress_done} {job.progress_unit}".strip()
        return f"{job.percent}% of {job.progress_total} {job.progress_unit}".strip()

    @admin.action(description="Retry now", permissions=["change"])
    def retry_now(self, request: HttpRequest, queryset) -> None:
        moved = sum(job.retry_now() for job in queryset)
        self.message_user(request, f"{moved} of {len(queryset)} job(s) queued to run now.")

    @admin.action(description="Cancel", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset) -> None:
        moved = sum(job.cancel() for job in queryset)
        self.message_user(request, f"{moved} of {len(queryset)} job(s) cancelled or stopping.")


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin):
    list_display = ("job", "number", "outcome", "category", "started_at", "duration")
    list_filter = ("outcome", "category")
    list_select_related = ("job",)
    search_fields = ("job__kind", "message")


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = ("key", "state", "trips", "consecutive_failures", "next_probe_at")
    list_filter = ("state",)
    search_fields = ("key",)


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ("name", "started_at", "seen_at")
