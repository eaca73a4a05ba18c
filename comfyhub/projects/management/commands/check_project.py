import json

from django.core.management.base import CommandError

from comfyhub.projects.check import FINDINGS
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
        "stored on the project and sets it ready or attention. Prints {ok, "
        "node_types_missing, models_missing, packs_failed, environment, checked_at, error} "
        "with --json. "
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
        if options["json"]:
            self.stdout.write(json.dumps(self.as_json(found, error)))
        else:
            self.say(project.name, found, error)
        if not found.get("ok"):
            raise SystemExit(1)

    def as_json(self, found: dict, error: dict | None) -> dict:
        report = {key: found.get(key, []) for key in FINDINGS}
        return {
            "ok": bool(found.get("ok")),
            **report,
            "checked_at": found.get("checked_at"),
            "error": error,
        }

    def say(self, name: str, found: dict, error: dict | None) -> None:
        if error:
            self.stderr.write(f"ComfyUI of {name} could not be asked: {error['message']}")
            return
        if found["ok"]:
            self.stdout.write(f"ComfyUI of {name} sees every node type and model it needs.")
            return
        for node_type in found["node_types_missing"]:
            self.stdout.write(f"ComfyUI does not know the node type {node_type}.")
        for key in found["models_missing"]:
            self.stdout.write(f"ComfyUI cannot see the model {key}.")
        for pack in found["packs_failed"]:
            self.stdout.write(f"The pack {pack['name']} failed to import: {pack['error']}")
        for line in found.get("environment", []):
            self.stdout.write(f"The Python environment is inconsistent: {line}")
