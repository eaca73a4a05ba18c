from comfyhub.projects.install import run_steps
from recovery.engine import recoverable
from recovery.models import Job


@recoverable("project_install")
def install(job: Job) -> None:
    run_steps(job)
