"""What the commands that run one project job share (launch_project, check_project): the
arguments, the project by slug, and the job run here, as the page's button queues it."""

from django.core.management.base import BaseCommand, CommandError

from comfyhub.projects import runtime
from comfyhub.projects.models import Project
from recovery.engine import run_foreground
from recovery.models import Job


class ProjectJobCommand(BaseCommand):
    kind = ""  # the job kind, e.g. "project_launch"
    params: dict = {}  # the job's own params; an unfinished job is joined only if they match

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--timeout", type=float, default=runtime.HEALTH_TIMEOUT)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def project(self, options: dict) -> Project:
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be more than 0 seconds.", returncode=2)
        return find(options["slug"])

    def run_job(self, project: Project, options: dict) -> Job:
        """The project's job of this kind (one already under way is joined), run here until
        it ends; `project` is re-read after it."""
        queued = project.queue_job(
            self.kind,
            dispatch=False,
            matching=self.params,
            timeout=options["timeout"],
            **self.params,
        )
        job = run_foreground(queued.pk)
        project.refresh_from_db()
        return job


def find(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project {slug!r}. See the Projects page for names.", returncode=2)
    return project
