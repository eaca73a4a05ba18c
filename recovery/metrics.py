"""How often jobs fail, how often they recover, and how fast — per kind and per category.

compute() returns plain JSON-ready data built from a few grouped queries, so its cost does
not grow with a Python loop over every stored attempt. An attempt counts as a failure when
its outcome is retry, failed, restarted or lost; a job "recovered" when it failed at least
once and still ended succeeded. Time to recover runs from the end of the job's first
failing attempt to the job's finish.
"""

from django.db.models import Avg, Count, DurationField, Exists, F, Min, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from recovery.models import Attempt, CircuitBreaker, Job, Outcome, Status

FAILING = (Outcome.RETRY, Outcome.FAILED, Outcome.RESTARTED, Outcome.LOST)


def compute(now=None) -> dict:
    """Every metric at once; `now` only stamps `generated_at`."""
    return {
        "generated_at": (now or timezone.now()).isoformat(),
        "kinds": kinds(),
        "categories": categories(),
        "breakers": breakers(),
        "totals": totals(),
    }


def attempt_counts() -> dict:
    return {"attempts": Count("id"), "failures": Count("id", filter=Q(outcome__in=FAILING))}


def job_counts() -> dict:
    failed = Q(has_failed=True)
    recovered = failed & Q(status=Status.SUCCEEDED)
    to_recover = F("finished_at") - F("first_failure")
    return {
        "jobs": Count("id"),
        "failed_at_least_once": Count("id", filter=failed),
        "recovered": Count("id", filter=recovered),
        "time_to_recover": Avg(to_recover, filter=recovered, output_field=DurationField()),
    }


def jobs_with_failures():
    failures = Attempt.objects.filter(job=OuterRef("pk"), outcome__in=FAILING)
    first = failures.values("job").annotate(first=Min("finished_at")).values("first")
    return Job.objects.annotate(has_failed=Exists(failures), first_failure=Subquery(first))


def summary(jobs: dict, attempts: dict) -> dict:
    failed, recovered = jobs["failed_at_least_once"], jobs["recovered"]
    took = jobs["time_to_recover"]
    return {
        "jobs": jobs["jobs"],
        "attempts": attempts.get("attempts", 0),
        "failures": attempts.get("failures", 0),
        "failed_at_least_once": failed,
        "recovered": recovered,
        "recovery_rate": recovered / failed if failed else None,
        "mean_time_to_recover_seconds": took.total_seconds() if took is not None else None,
    }


def kinds() -> dict:
    by_kind = Attempt.objects.values("job__kind").annotate(**attempt_counts()).order_by()
    attempts = {row.pop("job__kind"): row for row in by_kind}
    rows = jobs_with_failures().values("kind").annotate(**job_counts()).order_by("kind")
    return {row["kind"]: summary(row, attempts.get(row["kind"], {})) for row in rows}


def categories() -> dict:
    categorised = Attempt.objects.exclude(category="").values("category")
    rows = categorised.annotate(**attempt_counts()).order_by("category")
    return {row.pop("category"): row for row in rows}


def breakers() -> dict:
    return {
        breaker.key: {
            "state": breaker.state,
            "trips": breaker.trips,
            "next_probe_at": breaker.next_probe_at and breaker.next_probe_at.isoformat(),
        }
        for breaker in CircuitBreaker.objects.order_by("key")
    }


def totals() -> dict:
    jobs = jobs_with_failures().aggregate(**job_counts())
    attempts = Attempt.objects.aggregate(**attempt_counts())
    trips = CircuitBreaker.objects.aggregate(trips=Sum("trips", default=0))["trips"]
    return {**summary(jobs, attempts), "breaker_trips": trips}
