import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from comfyhub.library.fetch import human
from comfyhub.library.models import Download
from comfyhub.library.paths import (
    BadInput,
    check_destination,
    check_sha256,
    check_size,
    check_url,
)
from recovery.engine import run_foreground
from recovery.models import Category, Job, Status
from recovery.signals import job_changed

RETRYABLE = {
    Category.NETWORK,
    Category.TIMEOUT,
    Category.SERVER,
    Category.RATE_LIMITED,
    Category.DISK_FULL,
    Category.INTEGRITY,
    Category.UNKNOWN,
}


def say_why_waiting(job: Job, seconds: float) -> None:
    """A foreground download that waits (a retry, an open breaker, a busy slot) says
    how long and why, on stderr, so a silent terminal never looks hung. A dropped
    connection resumes within a second: no line for that."""
    if seconds < 1:
        return
    why = job.error_message or "waiting for its next try."
    sys.stderr.write(f"\nwaiting {seconds:.0f} s: {why}\n")
    sys.stderr.flush()


class Command(BaseCommand):
    requires_system_checks = []  # a download should start at once; `check` is its own command
    help = (
        "Download URL into the models folder at DIR/NAME, resuming, verifying and "
        "retrying as the worker does (same job). Running it again after it was killed "
        "resumes the same .part. Exit 0 downloaded, 1 failed/paused/cancelled, 2 bad input."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("url")
        parser.add_argument("--dest", required=True, help="DIR/NAME inside the models folder")
        parser.add_argument("--sha256", default="", help="expected sha256 (64 hex)")
        parser.add_argument("--size", type=int, default=None, help="expected size in bytes")
        parser.add_argument(
            "--mirror",
            action="append",
            default=[],
            metavar="URL",
            help="another source of the same file, tried when the ones before it fail for "
            "good or rest behind an open breaker (repeatable, in order)",
        )
        parser.add_argument(
            "--connections",
            type=int,
            default=None,
            help="connections for this file (1-64, default COMFYHUB_DOWNLOAD_CONNECTIONS); "
            "1 = one stream",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        try:
            url = check_url(options["url"])
            mirrors = [check_url(mirror) for mirror in options["mirror"]]
            check_destination(options["dest"], settings.MODELS_DIR)
            sha256 = check_sha256(options["sha256"])
            size = check_size(options["size"], "--size")
            connections = check_connections(options["connections"])
        except BadInput as exc:
            raise CommandError(str(exc), returncode=2) from None
        download, _ = Download.objects.request(url, options["dest"], sha256, size, mirrors)
        if connections:
            download.want_connections(connections)
        if download.job.status == Status.PAUSED:
            download.job.retry_now()
        job = self.run(download, bar=sys.stderr.isatty() and not options["json"])
        download.refresh_from_db()
        self.report(download, job, options["json"])
        if job.status != Status.SUCCEEDED:
            sys.exit(1)

    def run(self, download: Download, bar: bool) -> Job:
        def show(sender, job, **kwargs):
            if job.pk == download.job_id:
                sys.stderr.write("\r" + progress_line(job))
                sys.stderr.flush()

        if bar:
            job_changed.connect(show, dispatch_uid="download-bar")
        try:
            return run_foreground(download.job_id, on_wait=say_why_waiting)
        finally:
            if bar:
                job_changed.disconnect(dispatch_uid="download-bar")
                sys.stderr.write("\n")

    def report(self, download: Download, job: Job, as_json: bool) -> None:
        error = None
        if job.status != Status.SUCCEEDED:
            error = {
                "category": job.error_category or job.status,
                "message": job.error_message,
                "retryable": job.error_category in RETRYABLE,
            }
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "status": job.status,
                        "path": str(download.path),
                        "bytes": download.bytes_done,
                        "sha256": download.sha256 or None,
                        "attempts": job.attempt,
                        "error": error,
                    }
                )
            )
        elif error:
            self.stderr.write(f"{job.status}: {job.error_message}")
        else:
            self.stdout.write(
                f"{download.path} {human(download.bytes_done)} sha256 {download.sha256}"
            )


def check_connections(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 64:
        raise BadInput(f"--connections must be from 1 to 64 (got {value}).")
    return value


def progress_line(job: Job) -> str:
    done, total = job.progress_done, job.progress_total
    if not total:
        return f"{job.status:>9} {human(done)}"
    filled = int(30 * done / total)
    return f"{job.status:>9} [{'#' * filled}{'.' * (30 - filled)}] {job.percent:3d}% {human(done)}"
