import json

from django.core.management.base import BaseCommand

from recovery.engine import run_foreground
from recovery.models import Job, Status


class Command(BaseCommand):
    help = (
        "Run the self-test job (database, models folder, channel layer) in the foreground, "
        "through the same job machinery the worker uses. Exit 0 if it succeeds, else 1."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        job = Job.objects.create(kind="selftest", params={"step_seconds": 0})
        job = run_foreground(job.pk)
        ok = job.status == Status.SUCCEEDED
        if options["json"]:
            error = None if ok else {"category": job.error_category, "message": job.error_message}
            self.stdout.write(json.dumps({"status": job.status, "job": job.pk, "error": error}))
        else:
            self.stdout.write(f"self-test {job.status}" + ("" if ok else f": {job.error_message}"))
        if not ok:
            raise SystemExit(1)
