from django.conf import settings
from django.core.management.base import BaseCommand

from recovery.models import process_name
from recovery.worker import run_cluster


class Command(BaseCommand):
    help = (
        "Run the worker: the django-q2 cluster that executes jobs, plus a heartbeat. "
        "Stops cleanly on SIGTERM or Ctrl-C. `serve` starts one for you."
    )

    def handle(self, *args, **options) -> None:
        interval = getattr(settings, "WORKER_TICK_SECONDS", 1.0)
        run_cluster(process_name(), interval)
