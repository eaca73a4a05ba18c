import json

from comfyhub.projects.management.project_job import ProjectJobCommand
from comfyhub.projects.models import RunState


class Command(ProjectJobCommand):
    kind = "project_launch"
    help = (
        "Start a ready project's ComfyUI on a free port from COMFYHUB_PORT_RANGE and wait "
        "until it answers (the same launch job the web page queues; a launch already under "
        "way is joined). It keeps running after this command exits; stop_project stops it. "
        "Prints {status, port, url, error} with --json. "
        "Exit 0 running, 1 it did not start, 2 no such project."
    )

    def handle(self, *args, **options) -> None:
        project = self.project(options)
        job = self.run_job(project, options)
        running = project.run_state == RunState.RUNNING
        error = None if running else {"category": job.error_category, "message": job.error_message}
        if options["json"]:
            report = {"status": project.run_state, "port": project.port, "url": project.url}
            self.stdout.write(json.dumps({**report, "error": error}))
        elif running:
            self.stdout.write(f"{project.name} is running at {project.url}")
        else:
            self.stderr.write(f"{project.name} did not start: {job.error_message}")
        if not running:
            raise SystemExit(1)
