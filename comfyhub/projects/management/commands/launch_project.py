import json

from django.core.management.base import BaseCommand, CommandError

from comfyhub.projects import runtime
from comfyhub.projects.models import Project
from recovery.errors import JobError


class Command(BaseCommand):
    help = (
        "Start a ready project's ComfyUI on a free port from COMFYHUB_PORT_RANGE and wait "
        "until it answers. It keeps running after this command exits; stop_project stops "
        "it. Exit 0 running, 1 it did not start, 2 no such project."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--timeout", type=float, default=runtime.HEALTH_TIMEOUT)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        project = find(options["slug"])
        try:
            runtime.launch(project, timeout=options["timeout"])
        except JobError as exc:
            self.stderr.write(str(exc))
            raise SystemExit(1) from None
        if options["json"]:
            report = {"status": project.run_state, "port": project.port, "url": project.url}
            self.stdout.write(json.dumps(report))
        else:
            self.stdout.write(f"{project.name} is running at {project.url}")


def find(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project {slug!r}. See the Projects page for names.", returncode=2)
    return project
