"""What the project page tests share: a small spec, a project made from it, and the
helpers around them (the fixtures `pages_dir` and `dispatch` are in conftest)."""

import json

from django.test import Client

from comfyhub.projects import install
from comfyhub.projects.models import Project, ProjectStatus

MODEL = {
    "directory": "checkpoints",
    "name": "a.safetensors",
    "url": "https://example.org/a.safetensors",
    "sha256": "",
    "size": None,
}
SPEC = {
    "comfyui": {"repository": "https://example.org/ComfyUI.git", "commit": ""},
    "nodes": [],
    "models": [MODEL],
    "workflow": {"nodes": []},
    "workflow_name": "demo",
}


def make(name: str = "Demo", status: str = ProjectStatus.INSTALLING, **fields) -> Project:
    project = install.create(name, json.loads(json.dumps(SPEC)))
    Project.objects.filter(pk=project.pk).update(status=status, **fields)
    project.refresh_from_db()
    return project


def csrf_client() -> Client:
    return Client(enforce_csrf_checks=True)
