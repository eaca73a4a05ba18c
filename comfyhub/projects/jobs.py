"""The projects' job kinds (install, launch, check, add a node, rollback) and their live
cards.

Launch and rollback are jobs, not view code: a launch waits for ComfyUI's health check
(up to minutes) and a rollback reinstalls pip packages. Their cards render
templates/live/project_<kind>.html with the context registered here.

The recovery app imports every jobs.py when any command starts, so the modules that do a
project's work (install, check, restore: the pip/uv, node-map and workflow machinery) are
imported by the job that needs them, not here; `manage.py download` never loads them.
"""

from django.template.loader import render_to_string

from comfyhub.live.page import card_context, watched_object
from comfyhub.projects import runtime
from comfyhub.projects.models import (
    Project,
    ProjectStatus,
    RestorePoint,
    RunState,
    install_status,
)
from recovery.errors import Defer, JobError
from recovery.models import Category, Job, Status
from recovery.registry import recoverable

STEP_STATE = {Status.RUNNING: "current", Status.FAILED: "failed", Status.CANCELLED: "failed"}


@recoverable("project_install")
def install(job: Job) -> None:
    from comfyhub.projects.install import run_steps

    run_steps(job)


# A launch that timed out already waited minutes for the health check: say so at once.
@recoverable("project_launch", policies={Category.TIMEOUT: {"max_attempts": 1}})
def launch(job: Job) -> None:
    project = runtime_turn(job)
    if project.run_state == RunState.STARTING:
        runtime.stop(project)  # a killed attempt's half-started ComfyUI holds the port
    runtime.launch(project, timeout=job.params.get("timeout", runtime.HEALTH_TIMEOUT))


# A ComfyUI that did not answer was waited for minutes already: say so at once.
@recoverable("project_check", policies={Category.TIMEOUT: {"max_attempts": 1}})
def check_again(job: Job) -> None:
    from comfyhub.projects import check
    from comfyhub.projects.install import model_paths

    project = runtime_turn(job)
    if why := project.why_not_checkable():  # e.g. Retry started the install meanwhile
        raise JobError(why, category=Category.VALIDATION)
    relink = bool(job.params.get("relink"))
    if relink:  # ComfyUI reads extra_model_paths.yaml when it starts: restart it for this
        model_paths(project, job)
    check.check(project, timeout=job.params.get("timeout", runtime.HEALTH_TIMEOUT), fresh=relink)


@recoverable("project_add_node")
def add_node(job: Job) -> None:
    """Install the pack that provides a node type ComfyUI missed (ComfyUI stopped first:
    it loads packs only when it starts), then ask it again."""
    from comfyhub.projects import check, restore

    project = runtime_turn(job)
    runtime.stop(project)
    if job.params["repository"] not in {pin["repository"] for pin in project.node_pins}:
        restore.add_node(project, job.params["repository"])
    check.check(project)


@recoverable("project_fix_pack")
def fix_pack(job: Job) -> None:
    """Install a pack's requirements again (and run its install.py) after it failed to
    import, then ask ComfyUI again; stopped first, as ComfyUI imports packs only at start."""
    from comfyhub.projects import check
    from comfyhub.projects.install import install_pack_requirements

    project = runtime_turn(job)
    folder = project.pack_folder(job.params["pack"])
    runtime.stop(project)
    install_pack_requirements(project, folder)
    check.check(project)


@recoverable("project_fix")
def fix_all(job: Job) -> None:
    """Apply every fix of the last check that needs no choice, then ask ComfyUI again
    (comfyhub.projects.fixes.fix_all)."""
    from comfyhub.projects import fixes

    fixes.fix_all(runtime_turn(job), job)


@recoverable("project_rollback")
def rollback(job: Job) -> None:
    from comfyhub.projects import restore

    project = runtime_turn(job)
    point = project.restore_points.filter(pk=job.params.get("point")).first()
    if point is None:
        raise JobError("That restore point no longer exists.", category=Category.NOT_FOUND)
    runtime.stop(project)
    restore.rollback(project, point)


def runtime_turn(job: Job) -> Project:
    """The job's project once no older job of RUNTIME_KINDS is under way for it (Defer
    until then): a check and a launch never boot one ComfyUI twice, an addition never
    stops the ComfyUI a check is asking."""
    project = job_project(job)
    if older := project.older_runtime_job(job):
        what = older.kind.removeprefix("project_").replace("_", " ")
        raise Defer(f"Waiting for the {what} of {project.name} to finish.", seconds=1)
    return project


def job_project(job: Job) -> Project:
    project = Project.objects.filter(pk=job.params.get("project")).first()
    if project is None:
        raise JobError("The project was deleted.", category=Category.NOT_FOUND)
    return project


def queue_launch(project: Project) -> Job:
    """The launch under way, else a new launch job handed to the worker."""
    return project.queue_job("project_launch")


def queue_rollback(project: Project, point: RestorePoint) -> Job:
    """The rollback under way, else a new one to `point` handed to the worker."""
    return project.queue_job("project_rollback", point=point.pk)


def install_steps(job: Job | None) -> list[dict]:
    """Each install step's label and state: done, current, failed, waiting or pending."""
    from comfyhub.projects.install import STEP_LABELS

    data = job.checkpoint_data if job else {}
    done, current = set(data.get("steps", [])), data.get("current", "")
    return [
        {"label": label, "state": step_state(job, step in done, step == current)}
        for step, label in STEP_LABELS.items()
    ]


def step_state(job: Job | None, done: bool, current: bool) -> str:
    if done or (job and job.status == Status.SUCCEEDED):
        return "done"
    if not current or job is None:
        return "pending"
    return STEP_STATE.get(job.status, "waiting")


@card_context("project_install")
def install_card(job: Job) -> dict:
    project = Project.objects.filter(install_job=job).first()
    return {
        "project": project,
        "steps": install_steps(job),
        "status": install_status(job, project),
        "cancelled": project.cancelled_models() if project else [],
    }


@card_context("project_launch")
def launch_card(job: Job) -> dict:
    project = Project.objects.filter(pk=job.params.get("project")).first()
    return {
        "project": project and runtime.observed(project),
        "launch": job,
        "launching": not job.is_terminal,
    }


@card_context("project_check")
@card_context("project_add_node")
@card_context("project_fix_pack")
@card_context("project_fix")
def check_card(job: Job) -> dict:
    """Once the job ends its card also brings the findings and the status badge."""
    project = Project.objects.filter(pk=job.params.get("project")).first()
    return {"project": project, "status": project and ProjectStatus(project.status)}


@card_context("project_rollback")
def rollback_card(job: Job) -> dict:
    return {"project": Project.objects.filter(pk=job.params.get("project")).first()}


@watched_object("projects", Project)
def status_badge(project: Project) -> str:
    context = {"project": project, "status": ProjectStatus(project.status), "oob": True}
    return render_to_string("projects/_status.html", context)
