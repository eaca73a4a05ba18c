"""Installing a project: recoverable, checkpointed steps that never run twice.

Each step records itself in the job's checkpoint when it finishes; a re-run (after a killed
worker, or Retry after a failure) skips finished steps and starts the step it was in
from its beginning. A step therefore cleans up its own half-done output before redoing it.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import transaction

from comfyhub.library import folders, index
from comfyhub.library.models import Download
from comfyhub.library.paths import models_path
from comfyhub.projects import envs, registry, tools
from comfyhub.projects.check import check as ask_comfyui
from comfyhub.projects.models import (
    MAX_NAME,
    Project,
    ProjectStatus,
    check_name,
    model_key,
    node_key,
    present,
    sources_of,
    unique_slug,
)
from recovery.engine import run_foreground
from recovery.errors import Defer, JobError
from recovery.models import Category, Job, Status

PAUSED_RECHECK = 30.0  # seconds between two looks at a model download the user paused
# Filesystems that cannot hard-link the downloaded input file get a copy.
NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


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
        if (urls := sources_of(model)) and not present(model):
            sha256, size = model.get("sha256") or "", model.get("size")
            Download.objects.queue(urls[0], model_key(model), sha256, size, sources=urls[1:])
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
        if node_key(node) in done:
            continue
        try:
            pin = install_node(project, node)
            project.touch(node_pins=[*pins_without(project, node_key(node)), pin])
        except envs.PackRefused as exc:
            leave_out(project, job, node_key(node), exc)
        done = [*done, node_key(node)]
        job.checkpoint(nodes_done=done)
    envs.check_environment(project)


def leave_out(project: Project, job: Job, key: str, exc: JobError) -> None:
    """A refused pack (`key`: see node_key) is gone whole; the project goes on without
    it, and the job's checkpoint keeps why (`packs_failed`) for the page and the check."""
    note(project, f"left out {key}: {exc.category}: {exc.message}")
    failed = {"repository": key, "category": exc.category, "message": exc.message}
    job.checkpoint(packs_failed=[*job.checkpoint_data.get("packs_failed", []), failed])


def from_registry(pin: dict) -> bool:
    """A pin of a pack installed from the Comfy Registry: a version, no git commit."""
    return bool(pin.get("cnr_id")) and not pin.get("commit")


def install_node(project: Project, node: dict) -> dict:
    """Install one pack; its pin. A pack with a registry id comes from the Comfy Registry
    at its version (the latest when unknown); one the registry does not hold at that
    version comes from git at the pinned commit."""
    note(project, f"custom node {node_key(node)}")
    if not node.get("cnr_id"):
        return install_git_pack(project, node)
    version = node.get("version", "")
    info = registry.install_info(node["cnr_id"], version)
    if info is not None:
        return install_registry_pack(project, node, info)
    wanted = f"{node['cnr_id']}@{version or 'latest'}"
    if not node.get("repository"):
        raise JobError(
            f"The Comfy Registry has no {wanted} and no git repository is known for it. "
            "Pick a version the registry holds, or the pack's repository, then press Retry.",
            category=Category.NOT_FOUND,
        )
    note(project, f"the Comfy Registry has no {wanted}: git at the pinned commit instead")
    return install_git_pack(project, node)


def install_git_pack(project: Project, node: dict) -> dict:
    folder = project.comfyui_dir / "custom_nodes" / node_folder(node)
    log = project.install_log
    tools.clone(node["repository"], folder, log, node.get("commit", ""))
    if node.get("commit"):
        tools.checkout(folder, node["commit"], log)
    install_pack_requirements(project, folder)
    return {
        "repository": node["repository"],
        "name": folder.name,
        "commit": tools.head(folder, log),
    }


def install_registry_pack(project: Project, node: dict, info: dict) -> dict:
    """The registry's zip through the download engine, unpacked safely into the folder
    named after the registry id (as ComfyUI-Manager names it)."""
    cnr_id, version = node["cnr_id"], info["version"]
    folder = project.comfyui_dir / "custom_nodes" / node_folder({"name": cnr_id})
    dest = registry.zip_dest(cnr_id, version)
    note(project, f"{cnr_id}@{version} from the Comfy Registry")
    _, child = fetch_file(info["downloadUrl"], dest)
    if child.status != Status.SUCCEEDED:
        raise JobError(
            f"Pack {cnr_id}@{version}: {child.error_message or child.status}",
            category=child.error_category or Category.UNKNOWN,
        )
    registry.unpack(models_path(dest, settings.MODELS_DIR), folder)
    install_pack_requirements(project, folder)
    return {
        "repository": node.get("repository", ""),
        "name": folder.name,
        "commit": "",
        "cnr_id": cnr_id,
        "version": version,
    }


def install_pack_requirements(project: Project, folder: Path) -> None:
    envs.install_pack(project, folder)
    if (folder / "install.py").is_file():
        envs.run_install_script(project, folder)


def node_folder(node: dict) -> str:
    raw = node.get("name") or node["repository"].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw.removesuffix(".git")).lstrip(".-")
    if not name:
        raise JobError(
            f"No usable folder name for {node['repository']!r}.", category=Category.VALIDATION
        )
    return name


def pins_without(project: Project, key: str) -> list[dict]:
    """The project's pins but the one of the pack `key` (see node_key)."""
    return [pin for pin in project.node_pins if node_key(pin) != key]


def model_paths(project: Project, job: Job) -> None:
    """Point ComfyUI at the shared models folder (never a copy: models are shared)."""
    named = [model["directory"] for model in project.spec.get("models", [])]
    for directory in named:
        if why := folders.directory_problem(directory):
            raise JobError(why, category=Category.VALIDATION)
    text = folders.extra_model_paths(settings.MODELS_DIR.resolve(), named)
    (project.comfyui_dir / "extra_model_paths.yaml").write_text(text)


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
            if fetch_model(project, model) == Status.SUCCEEDED:
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


def fetch_model(project: Project, model: dict) -> str:
    """Join (or start) the model's download until it succeeds (its status) or the user
    cancels it (Status.CANCELLED), trying its sources in order; raises for anything else."""
    key = model_key(model)
    if index.link_from_store(model["directory"], model["name"], model.get("sha256") or ""):
        note(project, f"{key}: linked from the one-copy store, no download needed")
        return Status.SUCCEEDED
    urls = sources_of(model)
    if not urls:
        raise JobError(
            f"{key} is needed and not in the models folder, and no download link is known. "
            f"Put the file there, or choose to go without it, then press Retry.",
            category=Category.NOT_FOUND,
        )
    child = fetch_sources(project, urls, key, model)
    # Cancelled: the step's end reports it with the ways forward.
    if child.status not in (Status.SUCCEEDED, Status.CANCELLED):
        raise download_failed(f"Model {key}", child)
    return child.status


def fetch_sources(project: Project, urls: list[str], dest: str, file: dict) -> Job:
    """The download job of `dest` (models-folder relative): one download with `urls` as its
    sources, in order; the engine goes on from the next one when a source fails for good
    (library/mirrors.py)."""
    sha256, size = file.get("sha256") or "", file.get("size")
    download, child = fetch_file(urls[0], dest, sha256, size, sources=urls[1:])
    if child.status == Status.SUCCEEDED and download.mirror:
        note(project, f"{dest}: downloaded from {download.mirror}")
    return child


def download_failed(what: str, child: Job) -> JobError:
    return JobError(
        f"{what}: {child.error_message or child.status}",
        category=child.error_category or Category.UNKNOWN,
    )


def fetch_file(
    url: str,
    dest: str,
    sha256: str = "",
    size: int | None = None,
    sources: list[str] | None = None,
) -> tuple[Download, Job]:
    """Join (or start) the download of `url` (then `sources`) into `dest` (relative to the
    models folder) and run it here until it ends: the download and its job, succeeded,
    failed or cancelled. Long waits free the worker (Defer), and so does a download the
    user paused."""
    download, _ = Download.objects.request(url, dest, sha256, size, sources)
    child = run_foreground(download.job_id, sleep=defer_long_waits(dest))
    if child.status == Status.PAUSED:
        # The user paused it: the install goes on by itself once they resume it.
        raise Defer(f"Waiting for the download of {dest}: it is paused.", seconds=PAUSED_RECHECK)
    download.refresh_from_db()
    return download, child


def defer_long_waits(key: str):
    """Short waits (a dropped connection) happen here; longer ones free the worker."""

    def sleep(seconds: float) -> None:
        if seconds > 1:
            # Check back soon: the download may be running on another worker right now.
            raise Defer(f"Waiting for the download of {key}.", seconds=min(seconds, 5))
        time.sleep(seconds)

    return sleep


def input_files(project: Project, job: Job) -> None:
    """The workflow's input files (a launcher's `input/...` files): each comes through the
    download engine into the models folder's hidden downloads folder, then is linked
    into the project's ComfyUI/input. A file placed before a re-run is placed again."""
    done = job.checkpoint_data.get("files_done", [])
    for file in project.spec.get("files", []):
        if file["path"] in done or file["path"] in project.models_skipped:
            continue
        place_input(fetch_input(project, file), input_target(project, file["path"]))
        done = [*done, file["path"]]
        job.checkpoint(files_done=done)


def fetch_input(project: Project, file: dict) -> Path:
    """The downloaded file, under DOWNLOADS/input/<sha256>/NAME; without a sha256 the
    folder is named after its sources, so two different files of one name never meet."""
    urls = sources_of(file)
    if not urls:
        raise JobError(
            f"The input file {file['path']} has no download link. Put it in the project's "
            "ComfyUI/input folder yourself, or use a launcher.json that links it.",
            category=Category.NOT_FOUND,
        )
    folder = file.get("sha256") or hashlib.sha256("\n".join(urls).encode()).hexdigest()
    dest = f"{folders.DOWNLOADS}/input/{folder}/{PurePosixPath(file['path']).name}"
    child = fetch_sources(project, urls, dest, file)
    if child.status != Status.SUCCEEDED:
        raise download_failed(f"Input file {file['path']}", child)
    return Download.objects.get(job=child).path


def input_target(project: Project, path: str) -> Path:
    """Where `path` ("input/NAME") goes, its folders made: inside ComfyUI/input, also once
    links are followed; checked again once the folders exist."""
    root = project.comfyui_dir / "input"
    confined(root, path).parent.mkdir(parents=True, exist_ok=True)
    return confined(root, path)


def confined(root: Path, path: str) -> Path:
    parts = PurePosixPath(path).parts
    target = root.joinpath(*parts[1:]).parent.resolve() / parts[-1] if parts else root
    if parts[:1] != ("input",) or ".." in parts or not target.parent.is_relative_to(root.resolve()):
        raise JobError(
            f"The input file {path!r} would land outside ComfyUI's input folder.",
            category=Category.VALIDATION,
        )
    return target


def place_input(source: Path, target: Path) -> None:
    """A hard link to `source` at `target` (a copy across filesystems), swapped in whole."""
    staged = target.with_name(f".{target.name}.comfyhub")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError as exc:
        if exc.errno not in NO_LINK:
            raise
        shutil.copyfile(source, staged)
    os.replace(staged, target)


def workflow(project: Project, job: Job) -> None:
    if not project.spec.get("workflow"):
        return
    raw = project.spec.get("workflow_name") or project.slug
    name = re.sub(r"[^A-Za-z0-9 ._-]", "_", raw)[:MAX_NAME]
    folder = project.comfyui_dir / "user" / "default" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(project.spec["workflow"], indent=2))


def check(project: Project, job: Job) -> None:
    """Ask a freshly started ComfyUI what it sees, installing the modules it (or a pack)
    misses and asking again, a bounded number of rounds, each in the log. Its findings
    never fail the install: the project ends ATTENTION with them (follow_install_job); only
    not reaching ComfyUI does."""
    from comfyhub.projects import fixes

    applied: list[dict] = []
    found = ask_comfyui(project, fresh=True)
    for round_ in range(1, fixes.MODULE_ROUNDS + 1):
        needed = [f for f in fixes.needing_no_choice(found, applied) if is_module(f)]
        if not needed:
            return
        for fix in needed:
            note(project, f"check, round {round_}: {fix['detail']}")
            fixes.apply(project, fix)
        applied += needed
        found = ask_comfyui(project, fresh=True)


def is_module(fix: dict) -> bool:
    return fix["kind"] == "install_module"


STEPS = {
    "clone_comfyui": clone_comfyui,
    "create_venv": create_venv,
    "install_requirements": install_requirements,
    "custom_nodes": custom_nodes,
    "model_paths": model_paths,
    "models": models,
    "input_files": input_files,
    "workflow": workflow,
    "check": check,
}
STEP_LABELS = {
    "clone_comfyui": "Get ComfyUI",
    "create_venv": "Create the Python environment",
    "install_requirements": "Install ComfyUI's requirements",
    "custom_nodes": "Install custom nodes",
    "model_paths": "Connect the shared models folder",
    "models": "Download models",
    "input_files": "Add the workflow's input files",
    "workflow": "Add the workflow",
    "check": "Ask ComfyUI what it sees",
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
