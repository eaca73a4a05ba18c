import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from recovery.engine import dispatch_due, reap_expired, run_once
from recovery.models import Job, process_name


class Command(BaseCommand):
    help = (
        "Reclaim jobs whose worker died (lease expired) and hand every due job to the "
        "worker cluster. With --foreground, run the due jobs here instead, one attempt "
        "each, until none is due. Exit 0."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--foreground", action="store_true", help="run due jobs in this process"
        )

    def handle(self, *args, **options) -> None:
        reclaimed = reap_expired()
        if options["foreground"]:
            report = {"reclaimed": reclaimed, "ran": run_due_here()}
        else:
            report = {"reclaimed": reclaimed, "dispatched": dispatch_due()}
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        for key, ids in report.items():
            self.stdout.write(f"{key}: {len(ids)} job(s) {ids if ids else ''}".rstrip())


def run_due_here() -> list[int]:
    """One attempt per due job; claims are compare-and-set, so several of these can race."""
    owner, ran = process_name(), []
    while True:
        due = list(Job.objects.due(timezone.now()).order_by("id").values_list("pk", flat=True))
        progressed = False
        for pk in due:
            if pk not in ran and run_once(pk, owner) is not None:
                ran.append(pk)
                progressed = True
        if not progressed:
            return ran
