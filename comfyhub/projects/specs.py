"""What a project should contain, from a workflow, an official template or a launcher.json."""

from pathlib import Path

from django.conf import settings

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
    return spec_for(analyze(parse.from_json(data)), data, name)


def from_template(template_id: str) -> dict:
    try:
        data = templates.load_template(template_id)
    except (LookupError, OSError) as exc:
        missing = f"No official template {template_id!r}."
        raise JobError(missing, category=Category.NOT_FOUND) from exc
    return from_workflow(data, template_id)


def from_launcher(data: object) -> dict:
    requirements = analyze(parse.from_json(data))  # validates it is a launcher.json
    return spec_for(requirements, data["workflow_json"], str(data.get("name") or "workflow"))


def spec_for(requirements: Requirements, workflow: object, name: str) -> dict:
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
            }
            for m in requirements.models
        ],
        "unknown_node_types": requirements.unknown_node_types,
        "workflow": workflow,
        "workflow_name": name,
    }
