from django.core.management.base import BaseCommand

from comfyhub.projects import runtime
from comfyhub.projects.management.commands.launch_project import find


class Command(BaseCommand):
    help = "Stop a project's ComfyUI (SIGTERM to its process group, SIGKILL after a grace period)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")

    def handle(self, *args, **options) -> None:
        project = runtime.stop(find(options["slug"]))
        self.stdout.write(f"{project.name} stopped.")
