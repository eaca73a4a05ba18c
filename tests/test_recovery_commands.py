import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

import tests.jobkinds  # noqa: F401  (registers the test job kinds)
from recovery.models import Attempt, Job, Outcome, Status
from recovery.worker import PRUNE_SCHEDULE, ensure_schedules

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_recover_reclaims_a_job_whose_lease_expired_and_dispatches_it():
    job = Job.objects.create(kind="test.noop")
    Job.objects.claim(job.pk, "dead:1", timezone.now() - timedelta(minutes=5))
    Attempt.objects.create(job=job, number=1, owner="dead:1")
    report = json.loads(run("recover", "--json"))
    assert report == {"reclaimed": [job.pk], "dispatched": [job.pk]}
    assert job.attempts.get().outcome == Outcome.LOST


def test_recover_in_the_foreground_runs_the_due_jobs_here():
    job = Job.objects.create(kind="test.noop")
    report = json.loads(run("recover", "--foreground", "--json"))
    assert report == {"reclaimed": [], "ran": [job.pk]}
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


def test_recover_leaves_a_live_lease_alone():
    job = Job.objects.create(kind="test.noop")
    Job.objects.claim(job.pk, "alive:1", timezone.now())
    assert json.loads(run("recover", "--json"))["reclaimed"] == []


def test_prune_recovery_reports_what_it_deleted():
    old = timezone.now() - timedelta(days=10)
    Job.objects.create(kind="k", status=Status.CANCELLED, finished_at=old)
    assert json.loads(run("prune_recovery", "--days", "7", "--json")) == {"deleted": 1, "days": 7}


def test_prune_recovery_refuses_negative_days():
    with pytest.raises(CommandError) as error:
        call_command("prune_recovery", "--days", "-1")
    assert error.value.returncode == 2


def test_the_worker_schedules_pruning_daily():
    ensure_schedules()
    ensure_schedules()
    schedule = Schedule.objects.get(name=PRUNE_SCHEDULE)
    assert schedule.func == "recovery.maintenance.prune"
    assert schedule.schedule_type == Schedule.DAILY


def test_selftest_runs_in_the_foreground_through_the_job_machinery():
    report = json.loads(run("selftest", "--json"))
    assert report["status"] == "succeeded" and report["error"] is None
    assert Job.objects.get(pk=report["job"]).attempts.get().outcome == Outcome.SUCCEEDED
