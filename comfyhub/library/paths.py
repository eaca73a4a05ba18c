"""Where a download may write, which URLs it may fetch, and how big a file may be."""

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from comfyhub.library.folders import DOWNLOADS
from recovery.errors import JobError
from recovery.models import Category
from recovery.redact import redact

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# Control characters (CR/LF above all) would split or smuggle HTTP header lines.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEST_MAX = 500  # characters; Download.dest's column
NAME_MAX = 255  # bytes per file name on every filesystem we meet (ext4, btrfs, xfs, NTFS)
# What a download keeps beside its destination while it runs: the bytes, their sidecar,
# and the sidecar's next version before it is renamed into place.
PART, SIDECAR, SIDECAR_TMP = ".part", ".part.json", ".part.tmp"
WORKING_SUFFIXES = (PART, SIDECAR, SIDECAR_TMP)
LONGEST_SUFFIX = max(WORKING_SUFFIXES, key=len)
# Larger than any model file, far below what a database BIGINT holds: a bigger number
# is a typo or an attack, not a size.
MAX_SIZE = 10**15


class BadInput(JobError, ValueError):
    """Input a user must fix; commands exit 2 with this message, a job fails fast."""

    category = Category.VALIDATION


def models_path(dest: str, root: Path) -> Path:
    """The absolute path for `dest` (DIR/NAME, relative to `root`), or BadInput.

    Refuses absolute paths, `..`, NUL, a missing file name, names too long to keep a
    `.part.json` beside them, anything that resolves outside `root` through a symlink,
    and hidden top-level folders other than .downloads (the store's .store above all: a
    download there would overwrite a verified entry every name links to). The resolved
    path is returned so the check and the later write refer to the same file.
    """
    if not dest or "\x00" in dest:
        raise BadInput("The destination is empty or contains a NUL byte.")
    if len(dest) > DEST_MAX:
        raise BadInput(f"The destination is {len(dest)} characters long; at most {DEST_MAX} fit.")
    relative = PurePosixPath(canonical(dest))
    if relative.is_absolute() or dest.startswith("~"):
        raise BadInput(f"The destination {dest!r} must be relative to the models folder.")
    if ".." in relative.parts:
        raise BadInput(f"The destination {dest!r} may not contain '..'.")
    if dest.endswith(("/", "\\")) or len(relative.parts) < 2:
        raise BadInput(
            f"The destination {dest!r} must look like DIR/NAME, e.g. checkpoints/x.safetensors."
        )
    check_name_lengths(relative)
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise BadInput(f"The destination {dest!r} leads outside the models folder {root}.")
    for top in {relative.parts[0], target.relative_to(root).parts[0]}:
        if top.startswith(".") and top != DOWNLOADS:
            raise BadInput(
                f"The destination {dest!r} is in the hidden folder {top!r} of the models "
                "folder, which ComfyHub keeps for itself (the one-copy store lives in "
                ".store). Choose a model folder, e.g. checkpoints/x.safetensors."
            )
    return target


def canonical(dest: str) -> str:
    """One spelling per destination: `vae\\a.bin`, `vae//a.bin` and `vae/./a.bin` are all
    `vae/a.bin`, so they are one download."""
    return PurePosixPath(dest.replace("\\", "/")).as_posix()


def file_key(dest: str, root: Path) -> str:
    """The file `dest` really names, relative to `root`: `unet/x.safetensors` when
    `unet` is a link to `diffusion_models` is `diffusion_models/x.safetensors`, so two
    spellings of one file are one download (ComfyUI setups often link folders)."""
    relative = PurePosixPath(canonical(dest))
    root = root.resolve()
    folder = (root / relative.parent).resolve()
    if not folder.is_relative_to(root):
        return relative.as_posix()  # models_path refuses it before a byte is written
    return (folder / relative.name).relative_to(root).as_posix()


def check_destination(dest: str, root: Path) -> Path:
    """models_path(), and no link already planted where the download will write."""
    target = models_path(dest, root)
    refuse_planted(*(beside(target, suffix) for suffix in WORKING_SUFFIXES))
    return target


def beside(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def check_name_lengths(relative: PurePosixPath) -> None:
    *folders, name = relative.parts
    room = NAME_MAX - len(LONGEST_SUFFIX)
    if len(name.encode()) > room:
        raise BadInput(
            f"The file name {name[:40]!r}… is {len(name.encode())} bytes long; at most {room} "
            f"fit, so that its {LONGEST_SUFFIX} can sit beside it while it downloads."
        )
    for folder in folders:
        if len(folder.encode()) > NAME_MAX:
            raise BadInput(f"The folder name {folder[:40]!r}… is longer than {NAME_MAX} bytes.")


def check_url(url: str) -> str:
    """`url` without surrounding blanks, if it is an http(s) URL with a host; else BadInput.

    A refusal never repeats a password that was part of the URL."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"Only http:// and https:// URLs can be downloaded (got {redact(url)!r}).")
    if CONTROL.search(url):
        raise BadInput(
            f"The URL {redact(CONTROL.sub('?', url))!r} contains a line break or another "
            "control character; copy the link again."
        )
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise BadInput(f"The URL {redact(url)!r} has an invalid port.") from None
    return url


def host_of(url: str) -> str:
    """`host[:port]` of `url`, lower case, without the `user:password@` a URL may carry:
    what a download, its breaker and its pages name the server by."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port is not None else host


def check_sha256(value: str | None) -> str:
    if not value:
        return ""
    if not SHA256.match(value.strip()):
        raise BadInput(f"A sha256 is 64 hexadecimal characters (got {value!r}).")
    return value.strip().lower()


def check_size(value: int | None, what: str = "The size") -> int | None:
    """A file size in bytes (None: unknown), or BadInput: negative, or beyond MAX_SIZE."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:40]}…"
        raise BadInput(
            f"{what} must be a whole number of bytes from 0 to {MAX_SIZE:,} (got {shown})."
        )
    return value


# --- writing inside the models folder ---------------------------------------------------

WRITE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What open() says when the name is a link (O_NOFOLLOW), a FIFO nobody reads
# (O_NONBLOCK) or a folder.
REFUSED_OPENS = (errno.ELOOP, errno.ENXIO, errno.EISDIR)


def open_own_file(path: Path) -> int:
    """A write descriptor for `path`, created if missing, if it is a plain file that only
    this name points at; else BadInput.

    Something planted there instead (a symbolic or hard link, a FIFO, a device) could send
    the bytes, or the truncation, to a file outside the models folder: it is refused, never
    followed. Nothing is truncated here, so a refused file is left as it was.
    """
    fd = open_unfollowed(path, WRITE)
    if not is_own_file(os.fstat(fd)):
        os.close(fd)
        raise planted(path)
    return fd


def open_unfollowed(path: Path, flags: int = READ) -> int:
    """os.open() that refuses (BadInput) a symbolic link, a FIFO or a folder at `path`."""
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in REFUSED_OPENS:
            raise planted(path) from None
        raise
    os.set_blocking(fd, True)
    return fd


def refuse_planted(*paths: Path) -> None:
    """BadInput if any of `paths` exists as something other than a plain file of its own."""
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not is_own_file(info):
            raise planted(path)


def is_own_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def planted(path: Path) -> BadInput:
    return BadInput(
        f"{path} is a link or not a plain file; ComfyHub never writes through one, since it "
        "could lead outside the models folder. Remove it (or move the real file there), then "
        "retry."
    )
