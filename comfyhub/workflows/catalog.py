"""The official template catalog: categories, templates and the models each needs.

The models a template needs are computed by the analyzer from the workflow itself, not
copied from the index's display names. Thumbnails exist only when a media bundle package
(`comfyui-workflow-templates-media-*`) is installed; otherwise `thumbnail` is None.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from comfyhub.library.manager_data import package_dir
from comfyhub.workflows import analyze, parse, templates

MEDIA_PACKAGES = tuple(
    f"comfyui_workflow_templates_media_{part}"
    for part in ("image", "video", "api", "other", "assets_01", "assets_02")
)


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    description: str
    category: str  # its category's title, e.g. "Image"
    media_type: str
    tags: tuple[str, ...]
    models: tuple[analyze.ModelRequirement, ...]
    size: int | None  # bytes of its models, when the index knows it
    thumbnail: Path | None
    tutorial_url: str


@dataclass(frozen=True)
class TemplateCategory:
    title: str
    group: str  # the index's "category": Foundation, Applied, …
    type: str  # image, video, audio, 3d, llm, or ""
    templates: tuple[Template, ...]


@functools.cache
def catalog() -> tuple[TemplateCategory, ...]:
    """All categories with their templates and the model files each needs (computed once
    per process: the package does not change under a running process)."""
    return tuple(_category(group) for group in templates.index())


def _category(group: dict) -> TemplateCategory:
    return TemplateCategory(
        title=group.get("title", ""),
        group=group.get("category", ""),
        type=group.get("type", ""),
        templates=tuple(_template(entry, group.get("title", "")) for entry in group["templates"]),
    )


def _template(entry: dict, category: str) -> Template:
    workflow = parse.read(templates.folder() / f"{entry['name']}.json")
    return Template(
        name=entry["name"],
        title=entry.get("title", entry["name"]),
        description=entry.get("description", ""),
        category=category,
        media_type=entry.get("mediaType", ""),
        tags=tuple(entry.get("tags", ())),
        models=tuple(analyze.required_models(workflow)),
        size=entry.get("size") or None,
        thumbnail=thumbnail(entry),
        tutorial_url=entry.get("tutorialUrl", ""),
    )


def thumbnail(entry: dict) -> Path | None:
    """The template's first thumbnail from an installed media bundle, named as ComfyUI's
    frontend asks for it (`NAME-1.EXT`), or None."""
    wanted = f"{entry['name']}-1.{entry.get('mediaSubtype', 'webp')}"
    for package in filter(None, map(package_dir, MEDIA_PACKAGES)):
        for candidate in (package / "templates" / wanted, package / wanted):
            if candidate.is_file():
                return candidate
    return None
