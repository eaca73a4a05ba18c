"""Reading what a user hands us as a workflow: ComfyUI's UI workflow, its API prompt, or
ComfyUI-Launcher's `launcher.json`.

Everything that is not one of those becomes `JobError(category="validation")` with a
message naming what is wrong, never a traceback: the input comes from strangers (uploads,
pasted text, links), so size and nesting are bounded before and while parsing, and model
paths that could escape the models folder (`../`, absolute) are refused here, once.

The result is a `Workflow` whose nodes are the file's own dicts (checked, not copied):
the analyzer reads them as ComfyUI does. API prompts become nodes whose widget values are
a dict keyed by input name, so the analyzer treats both formats alike.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.db import models

from comfyhub.library import folders
from comfyhub.library.paths import check_size
from recovery.errors import JobError
from recovery.models import Category

MAX_BYTES = 20 * 1024 * 1024
MAX_DEPTH = 64
# A git commit, full or abbreviated; all digits is a version number, not a commit.
HEX_COMMIT = re.compile(r"^(?=.*[a-f])[0-9a-f]{7,40}$")
# A Comfy registry id ("comfyui-impact-pack") and a registry version ("8.8.1").
REGISTRY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
REGISTRY_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class Format(models.TextChoices):
    UI = "ui", "ComfyUI workflow"
    API = "api", "ComfyUI API prompt"
    LAUNCHER = "launcher", "ComfyUI-Launcher launcher.json"


@dataclass
class Workflow:
    format: str
    nodes: list[dict]
    subgraphs: dict[str, dict] = field(default_factory=dict)  # definitions.subgraphs by id
    group_nodes: dict[str, dict] = field(default_factory=dict)  # legacy extra.groupNodes
    models: list[dict] = field(default_factory=list)  # the top-level "models" list
    # From a launcher.json: its pinned ComfyUI, custom node repositories -> commit ("" when
    # not pinned), registry packs (id -> version), model files (directory, name, url,
    # sha256, size, sources) and input files for ComfyUI's input folder (path
    # "input/NAME", url, sha256, size, sources).
    comfyui_commit: str = ""
    snapshot_nodes: dict[str, str] = field(default_factory=dict)
    snapshot_registry: dict[str, str] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)
    input_files: list[dict] = field(default_factory=list)


def all_nodes(workflow: Workflow) -> Iterator[dict]:
    """Every node of the file: the top graph's, each subgraph's and each group node's."""
    yield from workflow.nodes
    for graph in (*workflow.subgraphs.values(), *workflow.group_nodes.values()):
        yield from graph.get("nodes") or []


def invalid(message: str) -> JobError:
    return JobError(message, category=Category.VALIDATION)


def read(path: Path) -> Workflow:
    """Parse the file at `path`; its size is checked before a byte is read."""
    path = Path(path)
    if not path.exists():
        raise JobError(f"There is no file {path}.", category=Category.NOT_FOUND)
    if not path.is_file():
        raise invalid(f"{path.name} is not a regular file.")
    if path.stat().st_size > MAX_BYTES:
        raise invalid(f"{path.name} is larger than {MAX_BYTES // 2**20} MB; no workflow is.")
    with path.open("rb") as handle:
        # One byte more than allowed: a file that grew since stat() is still caught.
        return parse(handle.read(MAX_BYTES + 1))


def parse(data: bytes | str) -> Workflow:
    return from_json(loads(data))


def loads(data: bytes | str) -> object:
    """JSON from untrusted bytes, within the size and nesting limits."""
    if len(data) > MAX_BYTES:
        raise invalid(f"The workflow is larger than {MAX_BYTES // 2**20} MB; no workflow is.")
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        value = json.loads(text)
    except UnicodeDecodeError:
        raise invalid("The workflow is not UTF-8 text; is it the right file?") from None
    except RecursionError:
        raise invalid(f"The JSON is nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise invalid(f"The workflow is not valid JSON: {exc}.") from None
    if not _depth_within(value, MAX_DEPTH):
        raise invalid(f"The JSON is nested deeper than {MAX_DEPTH} levels.")
    return value


def _depth_within(value: object, limit: int) -> bool:
    # Iterative, so a hostile structure cannot exhaust the interpreter's stack here either.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def from_json(data: object) -> Workflow:
    """A parsed JSON value as a Workflow, whichever of the three formats it is."""
    if not isinstance(data, dict):
        raise invalid(f"A workflow is a JSON object, not {_kind(data)}.")
    if data.get("format") == "comfyui_launcher" or "workflow_json" in data:
        return _launcher(data)
    workflow = _graph_or_prompt(data)
    if workflow is None:
        raise invalid(
            'This JSON is not a ComfyUI workflow: it has no "nodes" list (UI workflow), no '
            'nodes with a "class_type" (API prompt) and no "workflow_json" (launcher.json).'
        )
    return workflow


def _graph_or_prompt(data: dict) -> Workflow | None:
    if "nodes" in data:
        return _ui(data)
    if data and any(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return _api(data)
    return None


# --- UI workflows ---------------------------------------------------------------------------


def _ui(data: dict) -> Workflow:
    extra = _object(data.get("extra"), "extra")
    definitions = _object(data.get("definitions"), "definitions")
    subgraphs = _list(definitions.get("subgraphs"), "definitions.subgraphs")
    groups = _object(extra.get("groupNodes"), "extra.groupNodes")
    _list(data.get("links"), "links")
    return Workflow(
        format=Format.UI,
        nodes=_nodes(data["nodes"], "nodes"),
        subgraphs=dict(_subgraph(item, i) for i, item in enumerate(subgraphs)),
        group_nodes={name: _group(name, group) for name, group in groups.items()},
        models=_declared(data.get("models"), "models"),
    )


def _subgraph(item: object, index: int) -> tuple[str, dict]:
    where = f"definitions.subgraphs[{index}]"
    definition = _object(item, where)
    if not isinstance(definition.get("id"), str) or not definition["id"]:
        raise invalid(f"{where}.id must be a non-empty string.")
    where = f"subgraph {definition['id']}"
    _nodes(definition.get("nodes"), f"{where} nodes")
    for i, entry in enumerate(_list(definition.get("inputs"), f"{where} inputs")):
        _object(entry, f"{where} inputs[{i}]")
    _list(definition.get("links"), f"{where} links")
    return definition["id"], definition


def _group(name: str, group: object) -> dict:
    group = _object(group, f"extra.groupNodes[{name!r}]")
    # Legacy group nodes number their inner nodes by "index", not "id".
    _nodes(group.get("nodes"), f"group node {name!r} nodes", ids=False)
    return group


def _nodes(value: object, where: str, ids: bool = True) -> list[dict]:
    nodes = _list(value, where)
    for i, node in enumerate(nodes):
        _node(node, f"{where}[{i}]", ids)
    return nodes


def _node(node: object, where: str, ids: bool) -> None:
    node = _object(node, where)
    node_id = node.get("id")
    if (ids or "id" in node) and not _is_node_id(node_id):
        raise invalid(f"{where}.id must be a number or a string, not {_kind(node_id)}.")
    if not isinstance(node.get("type"), str) or not node["type"]:
        raise invalid(f"{where} (id {node_id}) has no node type.")
    where = f"node {node_id} ({node['type']})"
    if isinstance(node.get("mode", 0), bool) or not isinstance(node.get("mode", 0), int):
        raise invalid(f"{where}: mode must be a number.")
    if not isinstance(node.get("widgets_values"), list | dict | None):
        raise invalid(f"{where}: widgets_values must be a list or an object.")
    for i, entry in enumerate(_list(node.get("inputs"), f"{where} inputs")):
        _object(entry, f"{where} inputs[{i}]")
    properties = _object(node.get("properties"), f"{where} properties")
    _declared(properties.get("models"), f"{where} properties.models")


def _is_node_id(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | str) and value != ""


def _declared(value: object, where: str) -> list[dict]:
    """A `models` list: each entry names a file (directory + name) and maybe url and hash."""
    entries = _list(value, where)
    for i, entry in enumerate(entries):
        entry = _object(entry, f"{where}[{i}]")
        for key in ("name", "directory"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise invalid(f'{where}[{i}] needs a "{key}" string.')
        for key in ("url", "hash", "hash_type"):
            if not isinstance(entry.get(key, ""), str | None):
                raise invalid(f"{where}[{i}].{key} must be a string.")
        check_model_path(entry["directory"], entry["name"])
        check_directory(entry["directory"], f"{where}[{i}].directory")
    return entries


def check_directory(directory: str, where: str) -> None:
    if why := folders.directory_problem(directory):
        raise invalid(f"{where}: {why}")


def check_model_path(*parts: str, what: str = "model name") -> None:
    """Refuse a model directory or name (or another relative path: `what`) that could
    point outside its folder."""
    for part in parts:
        if "\x00" in part:
            raise invalid(f"The {what} {part!r} contains a NUL byte.")
        path = PurePosixPath(part.replace("\\", "/"))
        if path.is_absolute() or WINDOWS_DRIVE.match(part) or part.startswith("~"):
            raise invalid(f"The {what} {part!r} is an absolute path; only names are allowed.")
        if ".." in path.parts:
            raise invalid(f"The {what} {part!r} contains '..'; only names are allowed.")


# --- API prompts ----------------------------------------------------------------------------


def _api(data: dict) -> Workflow:
    return Workflow(format=Format.API, nodes=[_prompt_node(k, v) for k, v in data.items()])


def _prompt_node(node_id: str, node: object) -> dict:
    where = f"prompt node {node_id!r}"
    node = _object(node, where)
    if not isinstance(node.get("class_type"), str) or not node["class_type"]:
        raise invalid(f"{where} has no class_type.")
    inputs = _object(node.get("inputs"), f"{where} inputs")
    # [source id, output slot] is a link; everything else is a widget value.
    values = {name: v for name, v in inputs.items() if not _is_link(v)}
    return {"id": node_id, "type": node["class_type"], "mode": 0, "widgets_values": values}


def _is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


# --- launcher.json --------------------------------------------------------------------------


def _launcher(data: dict) -> Workflow:
    inner = data.get("workflow_json", data.get("workflow"))
    if not isinstance(inner, dict):
        raise invalid('This launcher.json has no workflow ("workflow_json" object).')
    workflow = _graph_or_prompt(inner)
    if workflow is None:
        raise invalid("The workflow inside this launcher.json is not a ComfyUI workflow.")
    snapshot = _object(data.get("snapshot_json", data.get("snapshot")), "snapshot_json")
    workflow.format = Format.LAUNCHER
    workflow.comfyui_commit = _commit(snapshot.get("comfyui"), "snapshot_json.comfyui")
    workflow.snapshot_nodes = _snapshot_nodes(snapshot.get("git_custom_nodes"))
    workflow.snapshot_registry = _snapshot_registry(snapshot.get("cnr_custom_nodes"))
    workflow.files, workflow.input_files = _files(data.get("files"))
    return workflow


def _snapshot_nodes(value: object) -> dict[str, str]:
    pinned = {}
    for url, info in _object(value, "snapshot_json.git_custom_nodes").items():
        info = _object(info, f"snapshot_json.git_custom_nodes[{url!r}]")
        if not info.get("disabled"):
            pinned[url] = _commit(info.get("hash"), f"the commit of {url}")
    return pinned


def _snapshot_registry(value: object) -> dict[str, str]:
    """ComfyUI-Manager's `cnr_custom_nodes`: {registry id: version}."""
    pinned = {}
    for cnr_id, version in _object(value, "snapshot_json.cnr_custom_nodes").items():
        if not REGISTRY_ID.match(cnr_id):
            raise invalid(f"snapshot_json.cnr_custom_nodes: {cnr_id!r} is not a registry id.")
        if version not in (None, "") and not registry_version(version):
            raise invalid(f"The registry version of {cnr_id} must be like 1.2.3, not {version!r}.")
        pinned[cnr_id.lower()] = version or ""
    return pinned


def registry_version(value: object) -> str:
    """`value` when it is a registry version (1.2.3), else "": a node's `ver` is a commit
    for git-installed packs."""
    if not isinstance(value, str) or HEX_COMMIT.match(value.lower()):
        return ""
    return value if REGISTRY_VERSION.match(value) else ""


def _commit(value: object, where: str) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not HEX_COMMIT.match(value.lower()):
        raise invalid(f"{where} must be a git commit (hexadecimal), not {value!r}.")
    return value.lower()


def _files(value: object) -> tuple[list[dict], list[dict]]:
    """The launcher's `files` as (models, input files). Each group lists alternatives of one
    file: they become one entry with every download URL in order (`sources`, `url` the
    first), as ComfyUI-Launcher tries them in turn. Only `models/DIR/NAME` and `input/NAME`
    are placed (where ComfyUI reads them); any other folder is refused."""
    found: dict[str, list[dict]] = {}
    for i, group in enumerate(_list(value, "files")):
        choices = group if isinstance(group, list) else [group]
        alternatives = [_file(entry, f"files[{i}][{j}]") for j, entry in enumerate(choices)]
        for dest, alternative in alternatives:
            if dest != alternatives[0][0]:
                raise invalid(
                    f"files[{i}] lists {alternatives[0][0]!r} and {dest!r}: the alternatives "
                    "of a group are one file, so they name one destination."
                )
            found.setdefault(dest, []).append(alternative)
    entries = [_entry(dest, alternatives) for dest, alternatives in found.items()]
    return [e for e in entries if "directory" in e], [e for e in entries if "path" in e]


def _file(entry: object, where: str) -> tuple[str, dict]:
    """(destination, {url, sha256, size}) of one alternative."""
    entry = _object(entry, where)
    dest, url, sha = (
        entry.get(k) for k in ("dest_relative_path", "download_url", "sha256_checksum")
    )
    if not isinstance(dest, str) or not isinstance(url, str | None):
        raise invalid(f'{where} needs a "dest_relative_path" and a "download_url" string.')
    if sha and (not isinstance(sha, str) or not SHA256.match(sha)):
        raise invalid(f"{where}.sha256_checksum is not a sha256 (64 hexadecimal characters).")
    check_model_path(dest, what="file path")
    parts = PurePosixPath(dest.replace("\\", "/")).parts
    if not _placeable(parts):
        raise invalid(
            f"{where}.dest_relative_path {dest!r} is neither models/DIR/NAME nor input/NAME: "
            "a launcher's files are placed only where ComfyUI reads them."
        )
    if parts[0] == "models":
        check_directory(parts[1], f"{where}.dest_relative_path")
    size = entry.get("size")
    return "/".join(parts), {
        "url": url or "",
        "sha256": (sha or "").lower(),
        "size": check_size(size, f"{where}.size") if isinstance(size, int) else None,
    }


def _placeable(parts: tuple[str, ...]) -> bool:
    """models/DIR/NAME or input/NAME: where ComfyUI reads a launcher's files."""
    top, depth = parts[:1], len(parts)
    return (top == ("models",) and depth > 2) or (top == ("input",) and depth > 1)


def _entry(dest: str, alternatives: list[dict]) -> dict:
    sources = list(dict.fromkeys(a["url"] for a in alternatives if a["url"]))
    # Alternatives that disagree on the sha256: the first one's is kept (the file it names
    # is the one the launcher tries first). Sizes that disagree cannot all be right: the
    # size is left unknown and the sha256 alone verifies the bytes.
    sha256 = next((a["sha256"] for a in alternatives if a["sha256"]), "")
    sizes = {
        a["size"] for a in alternatives if a["size"] is not None and a["sha256"] in ("", sha256)
    }
    file = {
        "url": sources[0] if sources else "",
        "sha256": sha256,
        "size": sizes.pop() if len(sizes) == 1 else None,
        "sources": sources,
    }
    parts = dest.split("/")
    if parts[0] == "input":
        return {"path": dest, **file}
    return {"directory": parts[1], "name": "/".join(parts[2:]), **file}


# --- shapes -------------------------------------------------------------------------------


def _object(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{where} must be a JSON object, not {_kind(value)}.")
    return value


def _list(value: object, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"{where} must be a list, not {_kind(value)}.")
    return value


def _kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        float: "a fraction",
    }
    return "null" if value is None else names.get(type(value), "a number")
