"""launcher.json (ComfyUI-Launcher's format): a project as a file that rebuilds it."""

from django.conf import settings

from comfyhub.library import index
from comfyhub.library.paths import BadInput, models_path
from comfyhub.projects.models import Project
from recovery.errors import JobError


def launcher_json(project: Project) -> dict:
    nodes = {
        pin["repository"]: {"hash": pin["commit"], "disabled": False} for pin in project.node_pins
    }
    return {
        "format": "comfyui_launcher",
        "version": 1,
        "workflow_json": project.spec.get("workflow"),
        "snapshot_json": {
            "comfyui": project.comfyui_commit,
            "git_custom_nodes": nodes,
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


def spec_from_launcher(data: dict) -> dict:
    """The project spec a launcher.json describes (inverse of launcher_json)."""
    if not isinstance(data, dict) or data.get("format") != "comfyui_launcher":
        raise JobError(
            "This is not a launcher.json (its format is not comfyui_launcher).",
            category="validation",
        )
    snapshot = data.get("snapshot_json") or {}
    nodes = [
        {"repository": url, "commit": pin.get("hash", "")}
        for url, pin in (snapshot.get("git_custom_nodes") or {}).items()
        if not pin.get("disabled")
    ]
    files = [entry for group in data.get("files") or [] for entry in group]
    return {
        "comfyui": {"repository": settings.COMFYUI_REPO, "commit": snapshot.get("comfyui", "")},
        "nodes": nodes,
        "models": [model_from_file(entry) for entry in files],
        "workflow": data.get("workflow_json"),
        "workflow_name": data.get("name", ""),
    }


def model_from_file(entry: dict) -> dict:
    relative = str(entry.get("dest_relative_path", "")).removeprefix("models/")
    try:
        models_path(relative, settings.MODELS_DIR)
    except BadInput as exc:
        raise JobError(
            f"launcher.json lists an unsafe file: {exc}", category="validation"
        ) from None
    directory, _, name = relative.partition("/")
    return {
        "directory": directory,
        "name": name,
        "url": entry.get("download_url", ""),
        "sha256": (entry.get("sha256_checksum") or "").lower(),
        "size": entry.get("size"),
    }
