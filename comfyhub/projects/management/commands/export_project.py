import json

from django.core.management.base import BaseCommand

from comfyhub.projects.export import launcher_json
from comfyhub.projects.management.commands.launch_project import find


class Command(BaseCommand):
    help = (
        "Print the project as launcher.json (ComfyUI-Launcher's format: workflow, pinned "
        "commits, model files with url / destination / sha256 / size). "
        "`create_project NAME --launcher FILE` rebuilds it."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--output", help="write to this file instead of stdout")

    def handle(self, *args, **options) -> None:
        text = json.dumps(launcher_json(find(options["slug"])), indent=2)
        if options["output"]:
            with open(options["output"], "w") as fh:
                fh.write(text + "\n")
        else:
            self.stdout.write(text)
