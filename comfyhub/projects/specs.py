"""What a project should contain, from a workflow, an official template or a launcher.json."""

from pathlib import Path

from django.conf import settings

from comfyhub.projects.models import sources_of
from comfyhub.workflows import parse, templates
from comfyhub.workflows.analyze import CustomNodePack, Requirements, analyze
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
    return {**from_workflow(data, template_id), "template": template_id}


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
        "nodes": [node_entry(pack) for pack in requirements.custom_nodes],
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


def node_entry(pack: CustomNodePack) -> dict:
    return {
        "repository": pack.repository,
        "commit": pack.commit,
        "cnr_id": pack.cnr_id,
        "version": pack.version,
        "reason": pack.reason,
        "node_types": sorted(pack.node_types),
    }


PICKED = "you chose it on the import page"


def with_picks(spec: dict, picks: dict[str, str]) -> dict:
    """`spec` with each node type in `picks` ({node type: repository}, already checked
    against the type's providers) moved to the chosen pack. A pack the picks leave with
    none of the workflow's types is dropped: two packs registering one node type fight
    over it. (A snapshot pack that provided none to begin with stays.)"""
    emptied = set()
    for node_type, repository in picks.items():
        current = next((n for n in spec["nodes"] if node_type in n["node_types"]), None)
        if current and current["repository"].lower() == repository.lower():
            continue
        if current:
            current["node_types"].remove(node_type)
            emptied.add(id(current))
        _picked_pack(spec, repository)["node_types"].append(node_type)
    spec["nodes"] = [n for n in spec["nodes"] if n["node_types"] or id(n) not in emptied]
    return spec


def _picked_pack(spec: dict, repository: str) -> dict:
    same = (n for n in spec["nodes"] if n["repository"].lower() == repository.lower())
    found = next(same, None)
    if found is None:
        found = {"repository": repository, "commit": "", "cnr_id": "", "version": ""}
        found.update(reason=PICKED, node_types=[])
        spec["nodes"].append(found)
    return found
