import json

from django.core.management.base import BaseCommand, CommandError

from recovery.conf import setting
from recovery.maintenance import prune


class Command(BaseCommand):
    help = (
        "Delete finished jobs (succeeded, failed, cancelled) and their attempts older than "
        "--days (default RECOVERY_RETENTION_DAYS). Unfinished jobs are never touched. "
        "The worker also runs this daily."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, default=None)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        days = options["days"]
        if days is not None and days < 0:
            raise CommandError("--days must be 0 or more", returncode=2)
        deleted = prune(days)
        used = setting("RECOVERY_RETENTION_DAYS") if days is None else days
        if options["json"]:
            self.stdout.write(json.dumps({"deleted": deleted, "days": used}))
        else:
            self.stdout.write(f"Deleted {deleted} finished job(s) older than {used} day(s).")
