"""Installing a project: recoverable, checkpointed steps that never run twice.

Each step records itself in the job's checkpoint when it finishes; a re-run (after a killed
worker, or Retry after a failure) skips finished steps and starts the step it was in
from its beginning. A step therefore cleans up its own half-done output before redoing it.
"""

import json
import re
import time

from django.conf import settings
from django.db import transaction

from comfyhub.library import folders
from comfyhub.library.models import Download
from comfyhub.projects import envs, tools
from comfyhub.projects.models import (
    MAX_NAME,
    Project,
    ProjectStatus,
    check_name,
    model_key,
    present,
    unique_slug,
)
from recovery.engine import run_foreground
from recovery.errors import Defer, JobError
from recovery.models import Category, Job, Status

PAUSED_RECHECK = 30.0  # seconds between two looks at a model download the user paused


def create(name: str, spec: dict, skipped: list[str] | None = None) -> Project:
    """A new project and its (not yet dispatched) install job.

    Missing models are queued for download at once, so they arrive while ComfyUI is being
    cloned and installed; the install's models step joins those downloads.
    """
    name = check_name(name)
    with transaction.atomic():
        project = Project.objects.create(
            name=name, slug=unique_slug(name), spec=spec, models_skipped=skipped or []
        )
        job = Job.objects.create(kind="project_install", params={"project": project.pk})
        project.touch(install_job=job)
    for model in project.required_models():
        if model.get("url") and not present(model):
            Download.objects.queue(
                model["url"], model_key(model), model.get("sha256", ""), model.get("size")
            )
    return project


def note(project: Project, line: str) -> None:
    tools.append(project.install_log, f"== {line}")


def clone_comfyui(project: Project, job: Job) -> None:
    source = project.spec.get("comfyui", {})
    repository = source.get("repository") or settings.COMFYUI_REPO
    tools.clone(repository, project.comfyui_dir, project.install_log, source.get("commit", ""))
    if source.get("commit"):
        tools.checkout(project.comfyui_dir, source["commit"], project.install_log)
    project.touch(comfyui_commit=tools.head(project.comfyui_dir, project.install_log))


def create_venv(project: Project, job: Job) -> None:
    envs.make_venv(project)


def install_requirements(project: Project, job: Job) -> None:
    envs.install_comfyui(project)


def custom_nodes(project: Project, job: Job) -> None:
    done = job.checkpoint_data.get("nodes_done", [])
    for node in project.spec.get("nodes", []):
        if node["repository"] in done:
            continue
        try:
            pin = install_node(project, node)
            project.touch(node_pins=[*pins_without(project, node["repository"]), pin])
        except envs.PackRefused as exc:
            leave_out(project, job, node["repository"], exc)
        done = [*done, node["repository"]]
        job.checkpoint(nodes_done=done)
    envs.check_environment(project)


def leave_out(project: Project, job: Job, repository: str, exc: JobError) -> None:
    """A refused pack is gone whole; the project goes on without it, and the job's
    checkpoint keeps why (`packs_failed`) for the page and the project check."""
    note(project, f"left out {repository}: {exc.category}: {exc.message}")
    failed = {"repository": repository, "category": exc.category, "message": exc.message}
    job.checkpoint(packs_failed=[*job.checkpoint_data.get("packs_failed", []), failed])


def install_node(project: Project, node: dict) -> dict:
    folder = project.comfyui_dir / "custom_nodes" / node_folder(node)
    log = project.install_log
    note(project, f"custom node {node['repository']}")
    tools.clone(node["repository"], folder, log, node.get("commit", ""))
    if node.get("commit"):
        tools.checkout(folder, node["commit"], log)
    envs.install_pack(project, folder)
    if (folder / "install.py").is_file():
        tools.run(
            [str(project.venv / "bin" / "python"), "install.py"],
            log,
            cwd=folder,
            timeout=tools.PIP_TIMEOUT,
        )
    return {
        "repository": node["repository"],
        "name": folder.name,
        "commit": tools.head(folder, log),
    }


def node_folder(node: dict) -> str:
    raw = node.get("name") or node["repository"].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw.removesuffix(".git")).lstrip(".-")
    if not name:
        raise JobError(
            f"No usable folder name for {node['repository']!r}.", category=Category.VALIDATION
        )
    return name


def pins_without(project: Project, repository: str) -> list[dict]:
    return [pin for pin in project.node_pins if pin["repository"] != repository]


def model_paths(project: Project, job: Job) -> None:
    """Point ComfyUI at the shared models folder (never a copy: models are shared)."""
    lines = ["comfyhub:", f"    base_path: {settings.MODELS_DIR.resolve()}"]
    named = [model["directory"] for model in project.spec.get("models", [])]
    lines += [f"    {folder}: {folder}/" for folder in folders.folders_for(named)]
    (project.comfyui_dir / "extra_model_paths.yaml").write_text("\n".join(lines) + "\n")


def models(project: Project, job: Job) -> None:
    """Join (or start) each missing model's download; a download the user cancelled is
    never restarted behind their back: the step stops and asks (download it again, or go
    without it)."""
    fetched: set[str] = set()
    # Pass after pass: while this step waits on one download, the user may download a
    # cancelled model again (or go without one); the step ends only when no model is left
    # that it has not seen through.
    while pending := still_to_fetch(project, fetched):
        for model in pending:
            if fetch_model(model) == Status.SUCCEEDED:
                fetched.add(model_key(model))
    if cancelled := project.cancelled_models():
        raise JobError(
            f"You cancelled the download of {', '.join(cancelled)}. Download it again, or "
            "go without it (under Models on the project page).",
            category=Category.NOT_FOUND,
        )


def still_to_fetch(project: Project, fetched: set[str]) -> list[dict]:
    project.refresh_from_db(fields=["models_skipped"])  # chosen while this step ran
    seen = fetched | set(project.cancelled_models())
    return [
        model
        for model in project.required_models()
        if model_key(model) not in seen and not present(model)
    ]


def fetch_model(model: dict) -> str:
    """Join (or start) the model's download until it succeeds (its status) or the user
    cancels it (Status.CANCELLED); raises for anything else."""
    key = model_key(model)
    if not model.get("url"):
        raise JobError(
            f"{key} is needed and not in the models folder, and no download link is known. "
            f"Put the file there, or choose to go without it, then press Retry.",
            category=Category.NOT_FOUND,
        )
    download, _ = Download.objects.request(
        model["url"], key, model.get("sha256", ""), model.get("size")
    )
    child = run_foreground(download.job_id, sleep=defer_long_waits(key))
    if child.status == Status.PAUSED:
        # The user paused it: the install goes on by itself once they resume it.
        raise Defer(f"Waiting for the download of {key}: it is paused.", seconds=PAUSED_RECHECK)
    # Cancelled: the step's end reports it with the ways forward.
    if child.status not in (Status.SUCCEEDED, Status.CANCELLED):
        raise JobError(
            f"Model {key}: {child.error_message or child.status}",
            category=child.error_category or Category.UNKNOWN,
        )
    return child.status


def defer_long_waits(key: str):
    """Short waits (a dropped connection) happen here; longer ones free the worker."""

    def sleep(seconds: float) -> None:
        if seconds > 1:
            # Check back soon: the download may be running on another worker right now.
            raise Defer(f"Waiting for the download of {key}.", seconds=min(seconds, 5))
        time.sleep(seconds)

    return sleep


def workflow(project: Project, job: Job) -> None:
    if not project.spec.get("workflow"):
        return
    raw = project.spec.get("workflow_name") or project.slug
    name = re.sub(r"[^A-Za-z0-9 ._-]", "_", raw)[:MAX_NAME]
    folder = project.comfyui_dir / "user" / "default" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(project.spec["workflow"], indent=2))


def finish(project: Project, job: Job) -> None:
    missing = [model_key(m) for m in project.required_models() if not present(m)]
    if missing:
        raise JobError(
            f"Still missing: {', '.join(missing)}. Retry to download them.",
            category=Category.NOT_FOUND,
        )
    project.touch(status=ProjectStatus.READY)


STEPS = {
    "clone_comfyui": clone_comfyui,
    "create_venv": create_venv,
    "install_requirements": install_requirements,
    "custom_nodes": custom_nodes,
    "model_paths": model_paths,
    "models": models,
    "workflow": workflow,
    "finish": finish,
}
STEP_LABELS = {
    "clone_comfyui": "Get ComfyUI",
    "create_venv": "Create the Python environment",
    "install_requirements": "Install ComfyUI's requirements",
    "custom_nodes": "Install custom nodes",
    "model_paths": "Connect the shared models folder",
    "models": "Download models",
    "workflow": "Add the workflow",
    "finish": "Check everything",
}


def run_steps(job: Job) -> None:
    """The install job: every step not yet recorded as done, in order."""
    project = Project.objects.get(pk=job.params["project"])
    project.touch(status=ProjectStatus.INSTALLING)
    done = job.checkpoint_data.get("steps", [])
    for number, (step, run) in enumerate(STEPS.items()):
        if step in done:
            continue
        job.checkpoint(current=step)
        job.progress(number, len(STEPS), "steps")
        note(project, f"step {step}")
        run(project, job)
        done = [*done, step]
        job.checkpoint(steps=done, current="")
    job.progress(len(STEPS), len(STEPS), "steps")
