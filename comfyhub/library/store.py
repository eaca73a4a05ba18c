"""One copy per file: verified bytes live once per sha256 in `<models>/.store/sha256/ab/<sha256>`
and every name in the models folder that holds them is a hard link to that entry.

- `keep(path, sha256)` after a download is verified and in place: the first file of a
  sha256 becomes the store's entry (a second hard link); a later file of the same sha256
  is replaced by a link to the entry (atomically), so its duplicate bytes are freed.
- `link_into(dest, sha256)` satisfies a destination from the store with no network.
- Entries are made read-only (0o444). A hard link shares one inode, so a program that
  opened one name for writing would change every name; read-only makes such a write fail
  instead. Replacing a name (the download engine's `os.replace`) or deleting it stays
  possible: those change the folder, not the file.
- Before an entry is trusted its size and its sha256 are checked, every time: a link made
  from a corrupted entry would spread the damage without any network check, and reading a
  file is several times faster than the download it replaces.
- A name on another filesystem (a folder of the models folder that is a mount point)
  cannot be a hard link (EXDEV): it is left as it is, with no store entry (a copy would
  save nothing), and the store never satisfies it (it is downloaded as usual).
- The store is a saving, never a condition: `keep` runs after a verified file is in
  place, so any error there (a read-only or broken store) is logged and the download
  still succeeds; `link_into` answers None (download as usual) when the entry vanished
  meanwhile, or the store cannot be linked from.
- The store is a top-level dot folder, so the index never lists it as a model. An entry
  no name links to any more (link count 1) holds bytes nobody uses: `prune_store`.
"""

import errno
import hashlib
import logging
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

STORE = ".store"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
READ_ONLY = 0o444
# A temporary name in the store older than this (by its ctime, which a link sets) was left
# by a process killed between a link and its rename: prune removes it.
STALE_TMP_SECONDS = 3600
# The temporary name a link gets beside its destination before it is renamed onto it; it
# ends with .tmp, which the index ignores, and fits the room paths.check_name_lengths keeps.
LINK_TMP = ".link.tmp"

logger = logging.getLogger(__name__)


def root() -> Path:
    return settings.MODELS_DIR.resolve() / STORE / "sha256"


def entry_path(sha256: str) -> Path:
    return root() / sha256[:2] / sha256


def linked_folder(sha256: str = "") -> Path | None:
    """The first of the store's folders (.store, .store/sha256 and, given a sha256, its
    shard) that is a symbolic link: the store then is not ours to write or prune."""
    top = settings.MODELS_DIR.resolve() / STORE
    for folder in [top, top / "sha256"] + ([entry_path(sha256).parent] if sha256 else []):
        if folder.is_symlink():
            return folder
    return None


def has(sha256: str) -> bool:
    """The store holds an entry for `sha256` (not verified: cheap enough for a page)."""
    return bool(sha256) and entry_path(sha256.lower()).is_file()


def keep(path: Path, sha256: str) -> None:
    """`path` was just verified to hold `sha256`: make it a name of the store's one copy.
    Best effort: the file is in place and correct whatever happens here."""
    try:
        keep_or_raise(path, sha256)
    except OSError as exc:
        if not cross_device(exc):
            logger.warning("Could not keep %s in the one-copy store: %s", path, exc)


def keep_or_raise(path: Path, sha256: str) -> None:
    # A link left by a kill between its link and its rename pins the entry forever.
    path.with_name(path.name + LINK_TMP).unlink(missing_ok=True)
    if linked := linked_folder(sha256):
        logger.warning("Not keeping %s in the one-copy store: %s is a symbolic link", path, linked)
        return
    entry = entry_path(sha256)
    mine = os.lstat(path)
    # A symbolic link found by a scan is not bytes of its own (and link() would copy the
    # link, not the file): only plain files join the store.
    if not stat.S_ISREG(mine.st_mode) or same_file(entry, mine):
        return
    if sound(entry, sha256, mine.st_size):
        replace_with_link(entry, path)
    else:
        adopt(path, entry)


def link_into(dest: Path, sha256: str, size: int | None = None) -> int | None:
    """Make `dest` a name of the store's entry for `sha256` (and, when given, `size` bytes):
    its size, or None when the store has no sound entry (absent, or corrupted on disk)."""
    entry = entry_path(sha256)
    if linked_folder(sha256) or not sound(entry, sha256, size):
        return None
    try:
        if not dest.exists() or not same_file(entry, os.lstat(dest)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            replace_with_link(entry, dest)
        return os.lstat(dest).st_size
    except (FileNotFoundError, PermissionError):
        return None  # pruned between the check and the link, or not ours to link
    except OSError as exc:
        if cross_device(exc):
            return None
        raise


def same_file(entry: Path, info: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.lstat(entry), info)
    except FileNotFoundError:
        return False


def sound(entry: Path, sha256: str, size: int | None) -> bool:
    """A plain file whose size (when known) and sha256 are the expected ones."""
    try:
        info = os.lstat(entry)
        if not stat.S_ISREG(info.st_mode) or (size is not None and info.st_size != size):
            return False
        with entry.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() == sha256
    except OSError:  # absent, vanished, unreadable, or a store folder that is a file
        return False


def adopt(path: Path, entry: Path) -> None:
    """Link `path` in as the entry, replacing a corrupted one (across filesystems: EXDEV,
    nothing changed)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    # A name of our own: two processes keeping the same sha256 never meet on one.
    tmp = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.tmp")
    os.link(path, tmp)
    try:
        os.chmod(tmp, READ_ONLY)
        os.replace(tmp, entry)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(entry.parent)


def replace_with_link(entry: Path, dest: Path) -> None:
    """Atomically make `dest` a hard link to `entry` (across filesystems: EXDEV, nothing
    changed); the bytes `dest` held before are freed unless another name holds them."""
    tmp = dest.with_name(dest.name + LINK_TMP)
    tmp.unlink(missing_ok=True)
    os.link(entry, tmp)
    try:
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def cross_device(exc: OSError) -> bool:
    return exc.errno == errno.EXDEV


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    links: int


def scan_entries():
    """(path, size, link count) of every entry (named by its sha256: temporary names are
    not entries), from one stat each, without following links."""
    top = root()
    if not top.is_dir() or linked_folder():
        return
    for folder in os.scandir(top):
        if not folder.is_dir(follow_symlinks=False):
            continue
        for item in os.scandir(folder.path):
            if len(item.name) == 64 and SHA256.match(item.name):
                info = item.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    yield item.path, info.st_size, info.st_nlink


def entries() -> list[Entry]:
    return [Entry(Path(path), size, links) for path, size, links in scan_entries()]


@dataclass(frozen=True)
class Stats:
    files: int
    stored: int  # bytes held by the store, once each
    saved: int  # bytes that extra names would take as copies


def stats() -> Stats:
    """The store's link and one name are the one copy; every further name is a copy
    saved. One stat per entry and no hashing: ~0.1 s for 10,000 entries."""
    files = stored = saved = 0
    for _, size, links in scan_entries():
        files, stored, saved = files + 1, stored + size, saved + size * max(links - 2, 0)
    return Stats(files, stored, saved)


def unlinked() -> list[Entry]:
    """Entries no name in the models folder links to any more."""
    return [entry for entry in entries() if entry.links == 1]


def prune(candidates: list[Entry]) -> int:
    """Delete the entries that are still unlinked; the bytes freed. Removing an entry a
    name was linked to meanwhile would lose no bytes (the name holds them), only the
    sharing, so one last look is enough."""
    freed, top = 0, root()
    if linked_folder():
        return 0
    for entry in candidates:
        try:
            info = os.lstat(entry.path)
        except FileNotFoundError:
            continue
        if info.st_nlink == 1 and entry.path.is_relative_to(top):
            entry.path.unlink()
            freed += info.st_size
    return freed


def prune_temporaries(now: float | None = None) -> int:
    """Delete the store's temporary names (`<sha256>.<uuid>.tmp`) older than
    STALE_TMP_SECONDS; the bytes freed (none while another name holds them)."""
    top, freed = root(), 0
    if not top.is_dir() or linked_folder():
        return 0
    now = time.time() if now is None else now
    for folder in os.scandir(top):
        if not folder.is_dir(follow_symlinks=False):
            continue
        for item in os.scandir(folder.path):
            if not item.name.endswith(".tmp"):
                continue
            try:
                info = item.stat(follow_symlinks=False)
                if now - info.st_ctime >= STALE_TMP_SECONDS:
                    os.unlink(item.path)
                    freed += info.st_size if info.st_nlink == 1 else 0
            except FileNotFoundError:
                continue
    return freed
