"""The official template catalog: categories, templates and the models each needs.

The models a template needs are computed by the analyzer from the workflow itself, not
copied from the index's display names. A template's picture is its first thumbnail in an
installed media bundle (`comfyui-workflow-templates-media-*`: the image one is a default
dependency, the others the `media` extra); without one, `picture` is None and the page
shows a placeholder without asking for a file.
"""

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from comfyhub.library.manager_data import package_dir
from comfyhub.workflows import analyze, parse, templates

MEDIA_PACKAGES = tuple(
    f"comfyui_workflow_templates_media_{part}"
    for part in ("image", "video", "api", "other", "assets_01", "assets_02")
)
# What an <img> can show, by the index's `mediaSubtype` (audio templates have an .mp3).
PICTURE_TYPES = {
    "webp": "image/webp",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "avif": "image/avif",
}
SQUARE = (400, 400)  # the bundles' usual size, for a file whose header says nothing


@dataclass(frozen=True)
class Picture:
    """A template's picture file. `version` changes whenever the file does (its size or
    time), so a URL carrying it may be cached for good; it is the ETag too."""

    name: str
    path: Path
    content_type: str
    version: str
    width: int
    height: int

    @property
    def url(self) -> str:
        return f"/projects/templates/{self.name}/picture/?v={self.version}"


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
    picture: Picture | None
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
        picture=pictures().get(entry["name"]),
        tutorial_url=entry.get("tutorialUrl", ""),
    )


@functools.cache
def by_name() -> dict[str, Template]:
    return {t.name: t for group in catalog() for t in group.templates}


@functools.cache
def pictures() -> dict[str, Picture]:
    """Each template's picture by template name: its first thumbnail (`NAME-1.EXT`, as
    ComfyUI's frontend asks for it) in an installed media bundle. Found once per process
    with one listing per bundle folder, so a page decides cheaply whether to ask for one."""
    files = media_files()
    found = {}
    for group in templates.index():
        for entry in group["templates"]:
            subtype = entry.get("mediaSubtype", "webp")
            path = files.get(f"{entry['name']}-1.{subtype}")
            if path and subtype in PICTURE_TYPES:
                found[entry["name"]] = picture(entry["name"], path, PICTURE_TYPES[subtype])
    return found


def media_files() -> dict[str, Path]:
    """Every file of the installed media bundles by file name (the first bundle wins)."""
    files: dict[str, Path] = {}
    for package in filter(None, map(package_dir, MEDIA_PACKAGES)):
        for folder in filter(Path.is_dir, (package / "templates", package)):
            with os.scandir(folder) as entries:
                for entry in filter(os.DirEntry.is_file, entries):
                    files.setdefault(entry.name, Path(entry.path))
    return files


def picture(name: str, path: Path, content_type: str) -> Picture:
    stat = path.stat()
    stamp = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    version = hashlib.sha256(stamp).hexdigest()[:16]
    with path.open("rb") as head:
        width, height = dimensions(head.read(32)) or SQUARE
    return Picture(name, path, content_type, version, width, height)


def dimensions(head: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP or PNG header (the bundles' formats), else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        chunk = head[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(
                head[27:30], "little"
            ) + 1
        if chunk == b"VP8 ":
            return (
                int.from_bytes(head[26:28], "little") & 0x3FFF,
                int.from_bytes(head[28:30], "little") & 0x3FFF,
            )
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None
