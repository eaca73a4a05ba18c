"""The Comfy Registry (`settings.REGISTRY_URL`): which zip holds a pack's version, and
unpacking that zip safely into the pack's folder.

`GET /nodes/{id}/install?version=V` answers a NodeVersion ({"id", "version",
"downloadUrl", "changelog", "dependencies", "deprecated", "status", "createdAt",
"node_id", ...}); without `version` it answers the latest; 404 when the node or the
version is unknown. Every request runs behind the breaker `registry`.

A zip is untrusted input. Before a byte is written, every member must stay inside the
pack folder (relative, no `..`, no backslash, no NUL) and be a plain file or folder (no
symlink, device, fifo or socket), and the member count and total size must stay within
MAX_MEMBERS and MAX_BYTES. It is unpacked into a hidden sibling folder that is renamed into
place at the end, so a killed worker never leaves half a pack (the next run removes the
sibling first). `.tracking` lists the members one per line, as ComfyUI-Manager's registry
install writes it.
"""

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx
from django.conf import settings

from comfyhub.library import folders
from comfyhub.library.paths import check_url
from comfyhub.projects import tools
from recovery.classify import classify
from recovery.errors import BreakerOpen, JobError
from recovery.models import Category, CircuitBreaker

BREAKER = "registry"
TIMEOUT = 30.0
MAX_MEMBERS = 20_000
MAX_BYTES = 2 * 2**30
TRACKING = ".tracking"
# Registry ids and versions end up in paths (the zip's destination, the pack folder).
CNR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
PLAIN_MODES = (0, stat.S_IFREG, stat.S_IFDIR)  # 0: the zip does not say (a plain file)


def check_id(cnr_id: str) -> str:
    if not CNR_ID.match(cnr_id or ""):
        raise JobError(f"{cnr_id!r} is not a Comfy Registry id.", category=Category.VALIDATION)
    return cnr_id


def check_version(version: str) -> str:
    if not VERSION.match(version or ""):
        raise JobError(
            f"{version!r} is not a Comfy Registry version.", category=Category.VALIDATION
        )
    return version


def install_info(cnr_id: str, version: str = "") -> dict | None:
    """The registry's NodeVersion of `cnr_id` at `version` ("" = its latest), or None when
    the registry has no such node or version. A failure to ask is a JobError classified as
    any other (network, timeout, server, ...); BreakerOpen while the registry rests."""
    url = f"{settings.REGISTRY_URL.rstrip('/')}/nodes/{quote(check_id(cnr_id))}/install"
    params = {"version": check_version(version)} if version else {}
    try:
        with CircuitBreaker.guard(BREAKER):
            info = request(url, params)
    except (BreakerOpen, JobError):
        raise
    except Exception as exc:
        failure = classify(exc)
        raise JobError(
            f"Comfy Registry: {failure.message}",
            category=failure.category,
            detail=failure.detail,
            retry_after=failure.retry_after,
        ) from None
    # Asked for a version it does not hold, the registry may answer another one.
    if info is None or (version and info["version"] != version):
        return None
    return info


def request(url: str, params: dict) -> dict | None:
    response = httpx.get(url, params=params, timeout=TIMEOUT, follow_redirects=True)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    info = response.json()
    if not isinstance(info, dict) or not isinstance(info.get("downloadUrl"), str):
        raise JobError(
            f"The Comfy Registry answered {url} with something that is not a node version.",
            category=Category.SERVER,
        )
    check_url(info["downloadUrl"])  # an API's answer is input like any other
    check_version(str(info.get("version", "")))
    return info


def zip_dest(cnr_id: str, version: str) -> str:
    """Where the download engine puts the pack's zip (relative to the models folder)."""
    return f"{folders.DOWNLOADS}/registry/{check_id(cnr_id)}/{check_version(version)}.zip"


def unpack(archive_path: Path, folder: Path) -> list[str]:
    """Replace `folder` with the zip's contents and its `.tracking`; the member names."""
    partial = folder.with_name(f".{folder.name}.unpacking.disabled")  # ComfyUI skips it
    if partial.exists():
        tools.remove_tree(partial)  # a killed run's leftover
    try:
        names = unpack_into(archive_path, partial)
    except BaseException:
        if partial.exists():
            tools.remove_tree(partial)
        raise
    (partial / TRACKING).write_text("\n".join(names))
    if folder.exists():
        tools.remove_tree(folder)
    partial.rename(folder)
    return names


def unpack_into(archive_path: Path, target: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = checked_members(archive)
            target.mkdir(parents=True)
            budget = MAX_BYTES
            for member in members:
                budget = write_member(archive, member, target, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise bad_zip(archive_path, str(exc)) from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        why = "members collide (one path twice, or a file where a folder must be)"
        raise bad_zip(archive_path, why) from None
    return [member.filename for member in members]


def checked_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise bad_zip(archive.filename, f"it has {len(members)} members, more than {MAX_MEMBERS}")
    total = sum(member.file_size for member in members)
    if total > MAX_BYTES:
        raise bad_zip(archive.filename, f"it unpacks to {total} bytes, more than {MAX_BYTES}")
    for member in members:
        if problem := member_problem(member):
            raise bad_zip(archive.filename, f"member {member.filename!r} {problem}")
    return members


def member_problem(member: zipfile.ZipInfo) -> str:
    """Why `member` may not be unpacked into the pack folder ("" when it may)."""
    name = member.filename
    path = PurePosixPath(name)
    if not name.strip("/") or "\x00" in name or "\\" in name:
        return "has no usable name"
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in path.parts:
        return "leads out of the pack folder ('..')"
    if path.parts[0] == TRACKING:
        return f"would take the place of {TRACKING}, the list of the pack's files"
    if stat.S_IFMT(member.external_attr >> 16) not in PLAIN_MODES:
        return "is a link or a special file"
    return ""


def write_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, budget: int):
    """Write one checked member below `target`; the bytes still allowed after it. The sizes
    a zip declares may lie, so the bytes really written count against the bound."""
    path = target.joinpath(*PurePosixPath(member.filename).parts)
    if member.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return budget
    path.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as source, path.open("xb") as out:
        while chunk := source.read(tools.CHUNK):
            budget -= len(chunk)
            if budget < 0:
                raise bad_zip(archive.filename, f"it unpacks to more than {MAX_BYTES} bytes")
            out.write(chunk)
    return budget


def bad_zip(archive_path, why: str) -> JobError:
    return JobError(
        f"The pack's zip {Path(archive_path).name} cannot be installed: {why}.",
        category=Category.VALIDATION,
    )
