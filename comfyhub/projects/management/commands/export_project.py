import json

from django.core.management.base import BaseCommand, CommandError

from comfyhub.projects.export import launcher_json
from comfyhub.projects.management.project_job import find


class Command(BaseCommand):
    help = (
        "Print the project as launcher.json (ComfyUI-Launcher's format: workflow, pinned "
        "commits, model files with url / destination / sha256 / size). "
        "`create_project NAME --launcher FILE` rebuilds it. With --output, writes the file "
        "and (with --json) prints {status, slug, path}. Exit 0 ok, 2 no such project or an "
        "unwritable --output."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--output", help="write to this file instead of stdout")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        project = find(options["slug"])
        text = json.dumps(launcher_json(project), indent=None if options["json"] else 2)
        if not options["output"]:
            self.stdout.write(text)
            return
        try:
            with open(options["output"], "w") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise CommandError(
                f"Cannot write {options['output']}: {exc.strerror}.", returncode=2
            ) from None
        if options["json"]:
            report = {"status": "ok", "slug": project.slug, "path": options["output"]}
            self.stdout.write(json.dumps(report))
