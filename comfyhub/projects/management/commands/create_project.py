import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from comfyhub.library import knowledge
from comfyhub.projects import check, install, specs
from comfyhub.projects.models import MAX_NAME, Project, ProjectStatus, check_name
from recovery.engine import run_foreground
from recovery.errors import JobError


class Command(BaseCommand):
    help = (
        "Create a project from a workflow file, an official template or a launcher.json, "
        "and install it here (same job as the worker: re-running after a kill resumes); the "
        "install ends by asking its ComfyUI what it sees (see check_project). The model "
        "links a workflow or launcher.json declares are remembered for the finder. Prints "
        "{status, slug, error, check} with --json (status: ready, attention or failed). "
        "Exit 0 ready, 1 attention or failed, 2 bad input "
        f"(e.g. a name longer than {MAX_NAME} characters)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--workflow", help="a ComfyUI workflow or API prompt JSON file")
        source.add_argument("--template", help="an official template id, e.g. image_flux2")
        source.add_argument("--launcher", help="a launcher.json (ComfyUI-Launcher format)")
        parser.add_argument(
            "--without",
            action="append",
            default=[],
            metavar="DIR/NAME",
            help="go without this model (recorded on the project)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        try:
            name = check_name(options["name"])
            spec = self.spec(options)
        except JobError as exc:
            raise CommandError(exc.message, returncode=2) from None
        project = install.create(name, spec, skipped=options["without"])
        job = run_foreground(project.install_job_id)
        project.refresh_from_db()
        self.report(project, job, options["json"])
        if project.status != ProjectStatus.READY:
            raise SystemExit(1)

    def spec(self, options: dict) -> dict:
        if options["template"]:
            return specs.from_template(options["template"])
        path = options["launcher"] or options["workflow"]
        data = specs.read_json(path)
        if options["launcher"]:
            spec = specs.from_launcher(data)
        else:
            spec = specs.from_workflow(data, options["name"])
        knowledge.learn_json(data, Path(path).name)
        return spec

    def report(self, project: Project, job, as_json: bool) -> None:
        installed = project.installed
        error = (
            None
            if installed
            else {"category": job.error_category or job.status, "message": job.error_message}
        )
        if as_json:
            report = {"status": project.status, "slug": project.slug, "error": error}
            found = check.as_json(project.last_check) if project.last_check else None
            self.stdout.write(json.dumps({**report, "check": found}))
        elif project.status == ProjectStatus.READY:
            self.stdout.write(
                f"{project.name} is ready: python manage.py launch_project {project.slug}"
            )
        elif installed:
            self.stderr.write(f"{project.name} is installed but needs attention:")
            for line in check.plain_lines(check.as_json(project.last_check)):
                self.stderr.write(f"  {line}")
            self.stderr.write(f"python manage.py fix_project {project.slug} applies the fixes.")
        else:
            self.stderr.write(f"{project.name} failed: {job.error_message}")
