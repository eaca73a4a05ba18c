"""launcher.json (ComfyUI-Launcher's format): a project as a file that rebuilds it."""

from comfyhub.library import index
from comfyhub.projects.install import from_registry
from comfyhub.projects.models import Project


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
        "files": [[file_entry(model)] for model in project.spec.get("models", [])],
    }


def file_entry(model: dict) -> dict:
    local = index.LocalModel.objects.filter(
        directory=model["directory"], name=model["name"]
    ).first()
    return {
        "download_url": model.get("url") or "",
        "dest_relative_path": f"models/{model['directory']}/{model['name']}",
        "sha256_checksum": model.get("sha256") or (local.sha256 if local else ""),
        "size": model.get("size") or (local.size if local else None),
    }
