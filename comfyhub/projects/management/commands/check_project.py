import json

from django.core.management.base import CommandError

from comfyhub.projects import check
from comfyhub.projects.management.project_job import ProjectJobCommand
from recovery.models import Status


class Command(ProjectJobCommand):
    kind = "project_check"
    help = (
        "Ask a project's ComfyUI what it sees: the node types of its workflow (GET "
        "/object_info), its models (GET /models/<folder>) and the custom node packs that "
        "failed to import (its log), with the packs the install left out and pip check's "
        "findings. A ComfyUI that is not running is started for this and "
        "stopped after; a running one is asked as it is and left running. The result is "
        "stored on the project and sets it ready or attention. A ComfyUI that exits while "
        "starting is a finding (comfyui_error: the exception's own line). Prints {ok, "
        "node_types_missing, models_missing, inputs_missing, packs_failed, environment, "
        "comfyui_error, fixes, checked_at, error} with --json; fix_project applies the "
        "fixes that need no choice. "
        "Exit 0 ComfyUI sees everything, 1 it misses something or could not be asked, 2 no "
        "such project or nothing installed yet."
    )

    def handle(self, *args, **options) -> None:
        project = self.project(options)
        if why := project.why_not_checkable():
            raise CommandError(why, returncode=2)
        job = self.run_job(project, options)
        found, error = project.last_check, None
        if job.status != Status.SUCCEEDED:
            found = {}
            error = {"category": job.error_category or job.status, "message": job.error_message}
        report = check.as_json(found, error)
        if options["json"]:
            self.stdout.write(json.dumps(report))
        else:
            self.say(project, report)
        if not report["ok"]:
            raise SystemExit(1)

    def say(self, project, report: dict) -> None:
        name = project.name
        if report["error"]:
            self.stderr.write(f"ComfyUI of {name} could not be asked: {report['error']['message']}")
        elif report["ok"]:
            self.stdout.write(f"ComfyUI of {name} sees every node type and model it needs.")
        else:
            for line in check.plain_lines(report):
                self.stdout.write(line)
            self.stdout.write(f"python manage.py fix_project {project.slug} applies the fixes.")
