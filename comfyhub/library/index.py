"""The local model index: what is in the models folder, by directory + name and by hash.

A model's `directory` is the first path component under the models folder (ComfyUI's
folder name: checkpoints, loras, vae, …); `name` is the rest, as ComfyUI's widgets show it
(it may contain subfolders, e.g. `sdxl/base.safetensors`).
"""

from pathlib import Path

from django.conf import settings
from django.utils import timezone

from comfyhub.library import store
from comfyhub.library.models import LocalModel
from comfyhub.library.paths import WORKING_SUFFIXES, BadInput, models_path

# A download's working files, and any other half-written temporary file.
IGNORED_SUFFIXES = (*WORKING_SUFFIXES, ".tmp")


def split(path: Path, root: Path | None = None) -> tuple[str, str]:
    relative = path.relative_to((root or settings.MODELS_DIR).resolve())
    return relative.parts[0], "/".join(relative.parts[1:])


def record(path: Path, sha256: str = "") -> LocalModel:
    """Remember one file (sha256 when known; a changed file forgets its old hash)."""
    stat = path.stat()
    directory, name = split(path.resolve())
    row, _ = LocalModel.objects.get_or_create(
        directory=directory,
        name=name,
        defaults={"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    )
    changed = (row.size, row.mtime_ns) != (stat.st_size, stat.st_mtime_ns)
    row.size, row.mtime_ns, row.seen_at = stat.st_size, stat.st_mtime_ns, timezone.now()
    row.sha256 = sha256 or ("" if changed else row.sha256)
    row.save()
    return row


def scan() -> int:
    """Bring the index in line with the folder: add/refresh files, drop vanished ones.

    A file whose sha256 is known (and unchanged since) joins the one-copy store; scan
    computes no hashes, so other files stay as they are."""
    root = settings.MODELS_DIR.resolve()
    seen = set()
    for path in root.glob("*/**/*"):
        if is_model(path, root):
            row = record(path)
            if row.sha256:
                store.keep(path, row.sha256)
            seen.add(row.pk)
    LocalModel.objects.exclude(pk__in=seen).delete()
    return len(seen)


def is_present(directory: str, name: str, sha256: str = "") -> bool:
    """True if the file is at directory/name in the models folder (and, when a sha256 is
    given and the file's hash is known, it matches). The same bytes under another name or
    in the store do not count: ComfyUI looks for this name (see `store.has`)."""
    try:
        path = models_path(f"{directory}/{name}", settings.MODELS_DIR)
    except BadInput:  # e.g. a link to a file outside the models folder: not ours to use
        return False
    if not path.is_file():
        return False
    known = LocalModel.objects.filter(directory=directory, name=name).exclude(sha256="").first()
    return not (sha256 and known and known.sha256 != sha256.lower())


def is_model(path: Path, root: Path) -> bool:
    """A finished file in a models folder: not a working file, not under a hidden top-level
    folder (DOWNLOADS, where packs' zips and input files land)."""
    top = path.relative_to(root).parts[0]
    return (
        not top.startswith(".") and inside(path, root) and not path.name.endswith(IGNORED_SUFFIXES)
    )


def mark_present(models) -> None:
    """Set `present` on each model requirement (anything with directory, name, sha256), and
    `in_store` on a missing one whose sha256 the store holds: linked at once, no network."""
    for model in models:
        model.present = is_present(model.directory, model.name, model.sha256)
        model.in_store = not model.present and store.has(model.sha256)


def link_from_store(directory: str, name: str, sha256: str) -> bool:
    """Put the store's copy of `sha256` at directory/name (a hard link) and index it."""
    if not sha256:
        return False
    path = models_path(f"{directory}/{name}", settings.MODELS_DIR)
    if store.link_into(path, sha256.lower()) is None:
        return False
    record(path, sha256.lower())
    return True


def inside(path: Path, root: Path) -> bool:
    """A file that is in the models folder, also once links are followed."""
    return path.is_file() and path.resolve().is_relative_to(root)


def find_by_sha256(sha256: str) -> LocalModel | None:
    return LocalModel.objects.filter(sha256=sha256.lower()).first()
