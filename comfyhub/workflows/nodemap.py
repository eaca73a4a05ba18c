"""Which pack provides a node type: the custom-node map and the order of its rules.

A core type (listed under ComfyUI itself in ComfyUI-Manager's `extension-node-map.json`,
or marked `cnr_id: comfy-core` anywhere in the workflow) is never a custom node. For any
other type `NodeMap.choose` takes the first rule that applies and says why: (1) a pack the
launcher's snapshot lists that provides it, (2) the node's `properties.cnr_id` (Comfy
registry id), (3) its `properties.aux_id` (GitHub owner/repo), (4) ComfyUI-Manager's
`preemptions`, (5) a pack already chosen for the workflow that provides it, (6) the most
starred provider (`github-stats.json`), (7) the first listed. Providers are the packs
listing the type, in the map's order, then those whose `nodename_pattern` matches it.
A type nothing provides is reported, not guessed.

The map comes from ComfyUI-Manager's data files through `comfyhub.library.manager_data`:
the installed `comfyui-manager` package's copy, else a download cached in `DATA_DIR/cache`,
revalidated by ETag on every load. When neither can be had, the map degrades to the core
types alone and says why in `unavailable`: the models of a workflow are still worth
reporting, and `cnr_id`/`aux_id` still name packs. Missing stars only skip rule 6.
"""

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field

from comfyhub.library.manager_data import manager_file
from comfyhub.workflows.parse import REGISTRY_ID
from comfyhub.workflows.templates import node_types
from recovery.classify import in_brief
from recovery.errors import JobError
from recovery.models import Category

logger = logging.getLogger(__name__)

CORE = "https://github.com/comfyanonymous/ComfyUI"
CORE_CNR_ID = "comfy-core"
MAP_FILE = "extension-node-map.json"
LIST_FILE = "custom-node-list.json"
STATS_FILE = "github-stats.json"
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
class Choice:
    """The pack chosen for a node type, and why. `repository` is "" when only the registry
    id is known; `providers` is every pack the map says provides the type, in its order."""

    repository: str
    reason: str
    cnr_id: str = ""
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeMap:
    core_types: frozenset[str]
    providers: dict[str, tuple[str, ...]]  # node type -> repositories listing it, in order
    patterns: tuple[tuple[re.Pattern, str], ...]
    registry: dict[str, str]  # Comfy registry id -> repository, only when unambiguous
    preemptions: dict[str, str] = field(default_factory=dict)  # node type -> repository
    stars: dict[str, int] = field(default_factory=dict)  # lower-case repository -> stars
    unavailable: str = ""  # why ComfyUI-Manager's data is missing from this map, if it is

    @classmethod
    def core_only(cls, core_types, why: str) -> "NodeMap":
        """The map without ComfyUI-Manager's data: `core_types` and nothing else."""
        return cls(frozenset(core_types), {}, (), {}, unavailable=why)

    @classmethod
    def from_data(
        cls, node_map: object, node_list: object = None, also_core=(), stats: object = None
    ) -> "NodeMap":
        """From the parsed contents of extension-node-map.json, custom-node-list.json and
        github-stats.json; `also_core` adds node types known to ship with ComfyUI."""
        if not isinstance(node_map, dict):
            raise JobError(f"{MAP_FILE} is not a JSON object.", category=Category.VALIDATION)
        packs = [_pack(url, *entry) for url, entry in node_map.items() if _is_pack(entry)]
        core = next((set(types) for url, types, _ in packs if url == CORE), set())
        custom = [pack for pack in packs if pack[0] != CORE]
        return cls(
            core_types=frozenset(core | set(also_core)),
            providers=_providers(custom),
            patterns=tuple(_patterns(custom)),
            registry=_registry([url for url, _, _ in custom] + _listed(node_list)),
            preemptions=_preemptions(custom),
            stars=_stars(stats),
        )

    def is_core(self, node_type: str, properties: dict, core_here=frozenset()) -> bool:
        return (
            node_type in self.core_types
            or node_type in core_here
            or properties.get("cnr_id") == CORE_CNR_ID
        )

    def providers_of(self, node_type: str) -> tuple[str, ...]:
        """Every pack listing `node_type`, in the map's order, then those whose
        nodename_pattern matches it."""
        listed = self.providers.get(node_type, ())
        matching = (url for pattern, url in self.patterns if pattern.search(node_type))
        return listed + tuple(url for url in matching if url not in listed)

    def repository(self, node_type: str, properties: dict, core_here=frozenset()) -> str | None:
        """CORE, a custom repository URL ("" when only a registry id is known), or None when
        nothing says where `node_type` is; for one node alone, as `choose` decides."""
        if self.is_core(node_type, properties, core_here):
            return CORE
        choice = self.choose(node_type, properties)
        return choice.repository if choice else None

    def choose(self, node_type: str, properties: dict, listed=(), chosen=()) -> Choice | None:
        """The pack for a custom node type, first rule wins: a provider in `listed` (the
        launcher's snapshot), the node's cnr_id, its aux_id, ComfyUI-Manager's preemption,
        a provider in `chosen` (packs already chosen for the workflow), the most starred
        provider, the first listed. None when nothing provides it. `listed` and `chosen`
        hold lower-case repositories."""
        return self.choose_named(node_type, properties, listed) or self.choose_by_map(
            node_type, chosen
        )

    def choose_named(self, node_type: str, properties: dict, listed=()) -> Choice | None:
        """Rules 1 to 4: what the launcher, the node itself or ComfyUI-Manager names."""
        providers = self.providers_of(node_type)
        in_snapshot = next((url for url in providers if url.lower() in listed), None)
        cnr_id, aux_id = registry_id(properties.get("cnr_id")), properties.get("aux_id")
        from_aux = f"https://github.com/{aux_id}" if _is_repo(aux_id) else ""
        if in_snapshot:
            return Choice(in_snapshot, SNAPSHOT, providers=providers)
        if cnr_id:
            repository = self.registry.get(cnr_id, from_aux)
            return Choice(repository, f"the workflow names registry id {cnr_id}", cnr_id, providers)
        if from_aux:
            return Choice(from_aux, f"the workflow names repository {aux_id}", providers=providers)
        if node_type in self.preemptions:
            return Choice(self.preemptions[node_type], PREEMPTED, providers=providers)
        return None

    def choose_by_map(self, node_type: str, chosen=()) -> Choice | None:
        """Rules 5 to 7: among the map's providers."""
        providers = self.providers_of(node_type)
        if not providers:
            return None
        already = next((url for url in providers if url.lower() in chosen), None)
        if already:
            return Choice(already, ALREADY_CHOSEN, providers=providers)
        starred = [url for url in providers if url.lower() in self.stars]
        if len(providers) > 1 and starred:
            best = max(starred, key=lambda url: self.stars[url.lower()])
            return Choice(best, f"most starred of {len(providers)} providers", providers=providers)
        only = len(providers) == 1
        return Choice(providers[0], ONLY if only else FIRST_LISTED, providers=providers)


SNAPSHOT = "listed in the launcher's snapshot"
PREEMPTED = "ComfyUI-Manager prefers it for this node"
ALREADY_CHOSEN = "already chosen for this workflow"
FIRST_LISTED = "first listed"
ONLY = "the only pack providing it"


def registry_id(value: object) -> str:
    """A Comfy registry id as the registry spells it (lower case), or "" when `value` is
    none, or is ComfyUI itself."""
    if not isinstance(value, str) or not REGISTRY_ID.match(value):
        return ""
    return "" if value.lower() == CORE_CNR_ID else value.lower()


def _is_repo(value: object) -> bool:
    return isinstance(value, str) and bool(GITHUB_REPO.match(value))


def _is_pack(entry: object) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], list)
        and isinstance(entry[1], dict)
    )


def _pack(url: str, types: list, meta: dict) -> tuple[str, list[str], dict]:
    return clean_url(url), [t for t in types if isinstance(t, str)], meta


def _providers(packs: list) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for url, types, _ in packs:
        for node_type in dict.fromkeys(types):
            found.setdefault(node_type, []).append(url)
    return {node_type: tuple(urls) for node_type, urls in found.items()}


def _preemptions(packs: list) -> dict[str, str]:
    # A later pack claiming the same type wins, as in ComfyUI-Manager's own merge.
    preempted = {}
    for url, _, meta in packs:
        types = meta.get("preemptions")
        if isinstance(types, list):
            preempted.update((t, url) for t in types if isinstance(t, str))
    return preempted


def _stars(stats: object) -> dict[str, int]:
    """Lower-case repository -> stars, from github-stats.json ({url: {"stars": n, …}})."""
    found = {}
    for url, entry in (stats if isinstance(stats, dict) else {}).items():
        stars = entry.get("stars") if isinstance(entry, dict) else None
        if isinstance(url, str) and isinstance(stars, int) and not isinstance(stars, bool):
            found[clean_url(url).lower()] = stars
    return found


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
    reason = in_brief(exc)
    return f"ComfyUI-Manager's node list could not be fetched: {reason[:1].lower()}{reason[1:]}"


def load(base_url: str | None = None, also_core=(), breaker: str | None = None) -> NodeMap:
    """Read the map from the installed package, or (given `base_url`, or without the
    package) from `base_url`/`settings.MANAGER_DATA_URL` through the ETag cache, asking the
    site only when `breaker` (a CircuitBreaker key) allows it. The cached copy is
    revalidated on every call: `default` calls once per process, and a node map should not
    lag a day behind a pack just added to ComfyUI-Manager."""
    node_map = json.loads(manager_file(MAP_FILE, base_url, breaker=breaker).read_bytes())
    node_list = json.loads(manager_file(LIST_FILE, base_url, breaker=breaker).read_bytes())
    return NodeMap.from_data(node_map, node_list, also_core, _load_stats(base_url, breaker))


def _load_stats(base_url: str | None, breaker: str | None) -> object:
    """github-stats.json, or None: without stars only the "most starred" rule is lost."""
    try:
        return json.loads(manager_file(STATS_FILE, base_url, breaker=breaker).read_bytes())
    except Exception as exc:  # degrade, never fail: the stars only break ties
        logger.warning("Without GitHub stars: %s", in_brief(exc))
        return None
