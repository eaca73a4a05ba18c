"""The official ComfyUI workflow templates' files (PyPI `comfyui-workflow-templates-json`).

`index.json` in the package lists categories and their templates; each template `NAME` is
`NAME.json` beside it. The other `index*.json` files (translations, schema, logos) and
files the index does not name are not templates. This module needs only the parser (the
node map reads it); the catalog with each template's models is `catalog.py`.
"""

import functools
import json
from pathlib import Path

from comfyhub.library.manager_data import package_dir
from comfyhub.workflows import parse
from recovery.errors import JobError
from recovery.models import Category

PACKAGE = "comfyui_workflow_templates_json"


def folder() -> Path | None:
    """The package's templates folder, or None when the package is not installed."""
    found = package_dir(PACKAGE)
    return found / "templates" if found and (found / "templates").is_dir() else None


@functools.cache
def index() -> list[dict]:
    root = folder()
    return json.loads((root / "index.json").read_bytes()) if root else []


@functools.cache
def names() -> tuple[str, ...]:
    """Every template the index lists, in catalog order."""
    return tuple(entry["name"] for group in index() for entry in group["templates"])


def path(name: str) -> Path:
    """The template's workflow file; only names the index lists, so no path tricks."""
    if name not in names():
        raise JobError(f"There is no template named {name!r}.", category=Category.NOT_FOUND)
    return folder() / f"{name}.json"


def load_template(name: str) -> dict:
    """The template's workflow JSON."""
    return parse.loads(path(name).read_bytes())


@functools.cache
def node_types() -> frozenset[str]:
    """Every node type the official templates use. They run on a plain ComfyUI, so all of
    these ship with it: the node map counts them as core, which ComfyUI-Manager's own
    list of core nodes lags behind."""
    found = set()
    for name in names():
        workflow = parse.read(folder() / f"{name}.json")
        found.update(node["type"] for node in parse.all_nodes(workflow))
    return frozenset(found)
