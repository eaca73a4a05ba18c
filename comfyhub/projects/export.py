"""launcher.json (ComfyUI-Launcher's format): a project as a file that rebuilds it."""

from comfyhub.library import index
from comfyhub.projects.install import from_registry
from comfyhub.projects.models import Project, sources_of


def launcher_json(project: Project) -> dict:
    """Git packs go in `git_custom_nodes` (repository: commit), registry packs in
    `cnr_custom_nodes` (registry id: version), as ComfyUI-Manager's snapshots keep them."""
    nodes = {
        pin["repository"]: {"hash": pin["commit"], "disabled": False}
        for pin in project.node_pins
        if not from_registry(pin)
    }
    registry_nodes = {
        pin["cnr_id"]: pin["version"] for pin in project.node_pins if from_registry(pin)
    }
    return {
        "format": "comfyui_launcher",
        "version": 1,
        "workflow_json": project.spec.get("workflow"),
        "snapshot_json": {
            "comfyui": project.comfyui_commit,
            "git_custom_nodes": nodes,
            "cnr_custom_nodes": registry_nodes,
            "file_custom_nodes": [],
            "pips": {},
        },
        "files": [
            *(model_alternatives(model) for model in project.spec.get("models", [])),
            *(alternatives(file["path"], file) for file in project.spec.get("files", [])),
        ],
    }


def model_alternatives(model: dict) -> list[dict]:
    local = index.LocalModel.objects.filter(
        directory=model["directory"], name=model["name"]
    ).first()
    known = {
        **model,
        "sha256": model.get("sha256") or (local.sha256 if local else ""),
        "size": model.get("size") or (local.size if local else None),
    }
    return alternatives(f"models/{model['directory']}/{model['name']}", known)


def alternatives(dest: str, file: dict) -> list[dict]:
    """One entry per source, in order (ComfyUI-Launcher tries them in turn); a file
    without a known link is one entry with an empty URL."""
    return [
        {
            "download_url": url,
            "dest_relative_path": dest,
            "sha256_checksum": file.get("sha256") or "",
            "size": file.get("size"),
        }
        for url in sources_of(file) or [""]
    ]
