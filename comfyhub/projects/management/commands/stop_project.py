import json

from django.core.management.base import BaseCommand

from comfyhub.projects import runtime
from comfyhub.projects.management.project_job import find


class Command(BaseCommand):
    help = (
        "Stop a project's ComfyUI (SIGTERM to its process group, SIGKILL after a grace "
        "period). Prints {status, slug} with --json. Exit 0 stopped, 2 no such project."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        project = runtime.stop(find(options["slug"]))
        if options["json"]:
            self.stdout.write(json.dumps({"status": project.run_state, "slug": project.slug}))
        else:
            self.stdout.write(f"{project.name} stopped.")
