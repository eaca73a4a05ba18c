"""What a project should contain, from a workflow, an official template or a launcher.json."""

from pathlib import Path

from django.conf import settings

from comfyhub.projects.models import sources_of
from comfyhub.workflows import parse, templates
from comfyhub.workflows.analyze import Requirements, analyze
from recovery.errors import JobError
from recovery.models import Category


def read_json(path: Path) -> object:
    """A user's file as JSON, with the workflow parser's size and depth limits."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"There is no file {path}.", category=Category.NOT_FOUND)
    if path.stat().st_size > parse.MAX_BYTES:
        raise parse.invalid(f"{path.name} is larger than {parse.MAX_BYTES // 2**20} MB.")
    return parse.loads(path.read_bytes())


def from_workflow(data: object, name: str) -> dict:
    workflow = parse.from_json(data)
    return spec_for(analyze(workflow), data, name, files=workflow.input_files)


def from_template(template_id: str) -> dict:
    try:
        data = templates.load_template(template_id)
    except (LookupError, OSError) as exc:
        missing = f"No official template {template_id!r}."
        raise JobError(missing, category=Category.NOT_FOUND) from exc
    return from_workflow(data, template_id)


def from_launcher(data: object) -> dict:
    workflow = parse.from_json(data)  # validates it is a launcher.json
    name = str(data.get("name") or "workflow")
    return spec_for(analyze(workflow), data["workflow_json"], name, files=workflow.input_files)


def spec_for(
    requirements: Requirements, workflow: object, name: str, files: list[dict] | None = None
) -> dict:
    """The project spec. A model's `sources` are every URL to try, in order (`url` first);
    `files` are the workflow's input files for ComfyUI's input folder (parse.Workflow)."""
    return {
        "comfyui": {"repository": settings.COMFYUI_REPO, "commit": requirements.comfyui_commit},
        "nodes": [
            {"repository": pack.repository, "commit": pack.commit}
            for pack in requirements.custom_nodes
        ],
        "models": [
            {
                "directory": m.directory,
                "name": m.name,
                "url": m.url,
                "sha256": m.sha256,
                "size": getattr(m, "size", None),
                "sources": sources_of({"url": m.url, "sources": m.sources}),
            }
            for m in requirements.models
        ],
        "files": files or [],
        "unknown_node_types": requirements.unknown_node_types,
        "workflow": workflow,
        "workflow_name": name,
    }
