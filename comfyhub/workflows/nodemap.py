"""Which repository provides a node type: the custom-node map.

Precedence for one node: a core type (listed under ComfyUI itself in ComfyUI-Manager's
`extension-node-map.json`, or marked `cnr_id: comfy-core` anywhere in the workflow) is
never a custom node; then the node's own `properties.cnr_id` (Comfy registry id), then
`properties.aux_id` (GitHub owner/repo), then the map's exact node lists (a pack's
`preemptions` first, else the first pack listing the type, as ComfyUI-Manager chooses),
then its `nodename_pattern` regexes. Anything else is unknown and reported, not guessed.

The map comes from ComfyUI-Manager's data files through `comfyhub.library.manager_data`:
the installed `comfyui-manager` package's copy, else a download cached in `DATA_DIR/cache`,
revalidated by ETag on every load. When neither can be had, the map degrades to the core
types alone and says why in `unavailable`: the models of a workflow are still worth
reporting, and `cnr_id`/`aux_id` still name packs.
"""

import json
import logging
import math
import re
import time
from dataclasses import dataclass

from comfyhub.library.finder_sources import plain
from comfyhub.library.manager_data import manager_file
from comfyhub.workflows.templates import node_types
from recovery.classify import classify
from recovery.errors import JobError
from recovery.models import Category

logger = logging.getLogger(__name__)

CORE = "https://github.com/comfyanonymous/ComfyUI"
CORE_CNR_ID = "comfy-core"
MAP_FILE = "extension-node-map.json"
LIST_FILE = "custom-node-list.json"
# Drawn and run by the frontend only; no Python package provides them.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
GITHUB_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# One breaker for ComfyUI-Manager's site, shared by every process: offline, each run asks
# once (then the process keeps its answer) and an open breaker spares even that.
BREAKER = "manager-data"
# A degraded map is kept this long: a server process must pick the data up once the site is
# back, a command analysing a folder must not ask once per workflow.
RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class NodeMap:
    core_types: frozenset[str]
    exact: dict[str, str]  # node type -> repository
    patterns: tuple[tuple[re.Pattern, str], ...]
    registry: dict[str, str]  # Comfy registry id -> repository, only when unambiguous
    unavailable: str = ""  # why ComfyUI-Manager's data is missing from this map, if it is

    @classmethod
    def core_only(cls, core_types, why: str) -> "NodeMap":
        """The map without ComfyUI-Manager's data: `core_types` and nothing else."""
        return cls(frozenset(core_types), {}, (), {}, unavailable=why)

    @classmethod
    def from_data(cls, node_map: object, node_list: object = None, also_core=()) -> "NodeMap":
        """From the parsed contents of extension-node-map.json and custom-node-list.json;
        `also_core` adds node types known to ship with ComfyUI."""
        if not isinstance(node_map, dict):
            raise JobError(f"{MAP_FILE} is not a JSON object.", category=Category.VALIDATION)
        packs = [_pack(url, *entry) for url, entry in node_map.items() if _is_pack(entry)]
        core = next((set(types) for url, types, _ in packs if url == CORE), set())
        custom = [pack for pack in packs if pack[0] != CORE]
        return cls(
            core_types=frozenset(core | set(also_core)),
            exact=_exact(custom),
            patterns=tuple(_patterns(custom)),
            registry=_registry([url for url, _, _ in custom] + _listed(node_list)),
        )

    def repository(self, node_type: str, properties: dict, core_here=frozenset()) -> str | None:
        """CORE, a custom repository URL, or None when nothing says where `node_type` is."""
        if node_type in self.core_types or node_type in core_here:
            return CORE
        cnr_id, aux_id = properties.get("cnr_id"), properties.get("aux_id")
        if cnr_id == CORE_CNR_ID:
            return CORE
        if isinstance(cnr_id, str) and cnr_id.lower() in self.registry:
            return self.registry[cnr_id.lower()]
        if isinstance(aux_id, str) and GITHUB_REPO.match(aux_id):
            return f"https://github.com/{aux_id}"
        return self.exact.get(node_type) or self._matching(node_type)

    def _matching(self, node_type: str) -> str | None:
        return next((url for pattern, url in self.patterns if pattern.search(node_type)), None)


def _is_pack(entry: object) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], list)
        and isinstance(entry[1], dict)
    )


def _pack(url: str, types: list, meta: dict) -> tuple[str, list[str], dict]:
    return clean_url(url), [t for t in types if isinstance(t, str)], meta


def _exact(packs: list) -> dict[str, str]:
    # setdefault keeps the first pack listing a type; preemptions then overrule it.
    exact = {}
    for url, types, _ in packs:
        for node_type in types:
            exact.setdefault(node_type, url)
    for url, _, meta in packs:
        preempted = meta.get("preemptions")
        if isinstance(preempted, list):
            exact.update((t, url) for t in preempted if isinstance(t, str))
    return exact


def _patterns(packs: list):
    for url, _, meta in packs:
        try:
            yield re.compile(meta["nodename_pattern"]), url
        except (KeyError, TypeError, re.error):
            continue


def _listed(node_list: object) -> list[str]:
    entries = node_list.get("custom_nodes") if isinstance(node_list, dict) else None
    entries = [e for e in entries or [] if isinstance(e, dict)]
    return [clean_url(e["reference"]) for e in entries if isinstance(e.get("reference"), str)]


def _registry(urls: list[str]) -> dict[str, str]:
    """Registry id -> repository. A pack's registry id is, by the registry's convention, its
    repository's name in lower case; a name two repositories share (forks) stays out."""
    by_name: dict[str, dict[str, str]] = {}
    for url in urls:
        by_name.setdefault(url.rsplit("/", 1)[-1].lower(), {})[url.lower()] = url
    unique = {name: found for name, found in by_name.items() if len(found) == 1}
    return {name: url for name, found in unique.items() for url in found.values()}


def clean_url(url: str) -> str:
    """One spelling per repository: no trailing slash or .git."""
    url = url.strip().rstrip("/")
    return url.removesuffix(".git")


# --- where the data comes from ----------------------------------------------------------


class _Current:
    """The process's node map and when it expires (never, once loaded)."""

    node_map: NodeMap | None = None
    expires = 0.0


def default(clock=time.monotonic) -> NodeMap:
    """The node map this process uses, loaded once. Node types of the official templates
    count as core too: ComfyUI-Manager's list of core nodes lags behind ComfyUI. When the
    data cannot be had the core-only map answers, and is asked for again only after
    RETRY_SECONDS."""
    now = clock()
    if _Current.node_map is None or now >= _Current.expires:
        _Current.node_map, _Current.expires = _load_default(now)
    return _Current.node_map


def _load_default(now: float) -> tuple[NodeMap, float]:
    try:
        return load(also_core=node_types(), breaker=BREAKER), math.inf
    except Exception as exc:  # a missing source degrades the analysis, it never fails it
        why = unavailable_because(exc)
        logger.warning("Custom-node resolution is unavailable: %s", why)
        return NodeMap.core_only(node_types(), why), now + RETRY_SECONDS


def unavailable_because(exc: Exception) -> str:
    """Why the node map is missing, in plain words, for an "unavailable: <why>" status."""
    reason = plain(classify(exc).message)
    return f"ComfyUI-Manager's node list could not be fetched: {reason[:1].lower()}{reason[1:]}"


def load(base_url: str | None = None, also_core=(), breaker: str | None = None) -> NodeMap:
    """Read the map from the installed package, or (given `base_url`, or without the
    package) from `base_url`/`settings.MANAGER_DATA_URL` through the ETag cache, asking the
    site only when `breaker` (a CircuitBreaker key) allows it. The cached copy is
    revalidated on every call: `default` calls once per process, and a node map should not
    lag a day behind a pack just added to ComfyUI-Manager."""
    node_map = json.loads(manager_file(MAP_FILE, base_url, breaker=breaker).read_bytes())
    node_list = json.loads(manager_file(LIST_FILE, base_url, breaker=breaker).read_bytes())
    return NodeMap.from_data(node_map, node_list, also_core)
