import json

from django.core.management.base import BaseCommand, CommandError

from comfyhub.projects import runtime
from comfyhub.projects.models import Project, RunState
from recovery.engine import run_foreground


class Command(BaseCommand):
    help = (
        "Start a ready project's ComfyUI on a free port from COMFYHUB_PORT_RANGE and wait "
        "until it answers (the same launch job the web page queues; a launch already under "
        "way is joined). It keeps running after this command exits; stop_project stops it. "
        "Prints {status, port, url, error} with --json. "
        "Exit 0 running, 1 it did not start, 2 no such project."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--timeout", type=float, default=runtime.HEALTH_TIMEOUT)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be more than 0 seconds.", returncode=2)
        project = find(options["slug"])
        queued = project.queue_job("project_launch", dispatch=False, timeout=options["timeout"])
        job = run_foreground(queued.pk)
        project.refresh_from_db()
        running = project.run_state == RunState.RUNNING
        error = None if running else {"category": job.error_category, "message": job.error_message}
        if options["json"]:
            report = {"status": project.run_state, "port": project.port, "url": project.url}
            self.stdout.write(json.dumps({**report, "error": error}))
        elif running:
            self.stdout.write(f"{project.name} is running at {project.url}")
        else:
            self.stderr.write(f"{project.name} did not start: {job.error_message}")
        if not running:
            raise SystemExit(1)


def find(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project {slug!r}. See the Projects page for names.", returncode=2)
    return project
