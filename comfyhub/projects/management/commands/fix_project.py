import json

from django.core.management.base import CommandError

from comfyhub.projects import check
from comfyhub.projects.management.project_job import ProjectJobCommand
from recovery.engine import run_foreground
from recovery.models import Status


class Command(ProjectJobCommand):
    kind = "project_fix"
    params = {"only": None}  # every fix that needs no choice, as the page's "Fix all"
    help = (
        "Apply every fix of the project's last check that needs no choice (install a "
        "missing module's distribution, pin a pack to the last commit with the node types "
        "the workflow uses, install a missing node type's only pack), record the --without "
        "files as left out on purpose, finish an install that stopped, and ask ComfyUI "
        "again. Prints {status, slug, applied: [{kind, target, detail}], check} with "
        "--json. Exit 0 ComfyUI sees everything, 1 it still misses something (or a fix "
        "failed), 2 bad input."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--without",
            action="append",
            default=[],
            metavar="DIR/NAME|input/NAME",
            help="go without this model or input file (recorded on the project)",
        )

    def handle(self, *args, **options) -> None:
        project = self.project(options)
        if unknown := [key for key in options["without"] if key not in project.file_keys()]:
            raise CommandError(
                f"{project.name} needs no file {unknown[0]!r}; --without takes a model as "
                "DIR/NAME or an input as input/NAME, as check_project lists them.",
                returncode=2,
            )
        if not (project.comfyui_dir / "main.py").is_file() and project.install_job is None:
            raise CommandError(f"{project.name} has nothing installed yet.", returncode=2)
        project.leave_out(options["without"])
        self.finish_install(project)
        job = self.run_job(project, options)
        error = None
        if job.status != Status.SUCCEEDED:
            error = {"category": job.error_category or job.status, "message": job.error_message}
        report = check.as_json(project.last_check, error)
        applied = job.checkpoint_data.get("applied", [])
        if options["json"]:
            result = {"status": project.status, "slug": project.slug, "applied": applied}
            self.stdout.write(json.dumps({**result, "check": report}))
        else:
            self.say(project, applied, report)
        if not report["ok"]:
            raise SystemExit(1)

    def finish_install(self, project) -> None:
        """Run an install that stopped, or one under way, here until it ends (its check
        applies the module fixes); a paused one stays paused (the fix job says so)."""
        project.finish_install()
        install = project.install_job
        if install and not install.is_terminal and install.status != Status.PAUSED:
            self.stderr.write(f"Finishing the install of {project.name} first…")
            run_foreground(install.pk)
            project.refresh_from_db()

    def say(self, project, applied: list[dict], report: dict) -> None:
        for fix in applied:
            self.stdout.write(f"Applied: {fix['detail']}")
        if report["error"]:
            self.stderr.write(f"{project.name} could not be fixed: {report['error']['message']}")
        elif report["ok"]:
            self.stdout.write(f"{project.name} is ready: ComfyUI sees everything it needs.")
        else:
            self.stderr.write(f"{project.name} still needs attention:")
            for line in check.plain_lines(report):
                self.stderr.write(f"  {line}")
