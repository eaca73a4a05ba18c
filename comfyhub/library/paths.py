"""Where a download may write, and which URLs it may fetch."""

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class BadInput(ValueError):
    """Input a user must fix; commands exit 2 with this message."""


def models_path(dest: str, root: Path) -> Path:
    """The absolute path for `dest` (DIR/NAME, relative to `root`), or BadInput.

    Refuses absolute paths, `..`, NUL, a missing file name and anything that resolves
    outside `root` through a symlink. The resolved path is returned so the check and
    the later write refer to the same file.
    """
    if not dest or "\x00" in dest:
        raise BadInput("The destination is empty or contains a NUL byte.")
    relative = PurePosixPath(dest.replace("\\", "/"))
    if relative.is_absolute() or dest.startswith("~"):
        raise BadInput(f"The destination {dest!r} must be relative to the models folder.")
    if ".." in relative.parts:
        raise BadInput(f"The destination {dest!r} may not contain '..'.")
    if dest.endswith(("/", "\\")) or len(relative.parts) < 2:
        raise BadInput(
            f"The destination {dest!r} must look like DIR/NAME, e.g. checkpoints/x.safetensors."
        )
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise BadInput(f"The destination {dest!r} leads outside the models folder {root}.")
    return target


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"Only http:// and https:// URLs can be downloaded (got {url!r}).")
    return url.strip()


def check_sha256(value: str | None) -> str:
    if not value:
        return ""
    if not SHA256.match(value.strip()):
        raise BadInput(f"A sha256 is 64 hexadecimal characters (got {value!r}).")
    return value.strip().lower()
