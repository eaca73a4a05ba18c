"""What a workflow needs: model files, custom node packs, and node types nobody provides.

Models follow ComfyUI's own metadata first: a node's `properties.models` and the
workflow's top-level `models` count when an *active* node (not muted, mode 2, nor
bypassed, mode 4) has a widget value naming the file. Without metadata, the widgets of
known core loaders name files (`LOADERS`). Subgraph instances are expanded as ComfyUI runs
them: a value an instance passes in through a promoted input overrides the inner widget.

Custom nodes are counted on every node of the file, muted and bypassed included: the
workflow must open without missing nodes even where it does not run them.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from comfyhub.workflows import nodemap
from comfyhub.workflows.parse import (
    HEX_COMMIT,
    SHA256,
    Workflow,
    all_nodes,
    check_model_path,
    invalid,
    read,
    registry_version,
)

INACTIVE_MODES = (2, 4)  # muted, bypassed
SUBGRAPH_INPUT = -10  # origin_id of links leaving a subgraph's input node
MAX_NESTING = 32
MAX_EXPANDED = 100_000  # nodes after expanding subgraphs: 10 instances of 10 of 10 … adds up
LEGACY_GROUP_PREFIXES = ("workflow>", "workflow/")
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


def _clip_loader(count: int) -> tuple:
    return tuple((i, f"clip_name{i + 1}", "text_encoders") for i in range(count))


# Core loaders whose widgets name model files: (widget index, input name, models folder).
# The index reads UI workflows, the input name API prompts.
LOADERS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "CheckpointLoaderSimple": ((0, "ckpt_name", "checkpoints"),),
    "CheckpointLoader": ((1, "ckpt_name", "checkpoints"),),
    "unCLIPCheckpointLoader": ((0, "ckpt_name", "checkpoints"),),
    "ImageOnlyCheckpointLoader": ((0, "ckpt_name", "checkpoints"),),
    "UNETLoader": ((0, "unet_name", "diffusion_models"),),
    "CLIPLoader": ((0, "clip_name", "text_encoders"),),
    "DualCLIPLoader": _clip_loader(2),
    "TripleCLIPLoader": _clip_loader(3),
    "QuadrupleCLIPLoader": _clip_loader(4),
    "VAELoader": ((0, "vae_name", "vae"),),
    "LoraLoader": ((0, "lora_name", "loras"),),
    "LoraLoaderModelOnly": ((0, "lora_name", "loras"),),
    "ControlNetLoader": ((0, "control_net_name", "controlnet"),),
    "DiffControlNetLoader": ((0, "control_net_name", "controlnet"),),
    "CLIPVisionLoader": ((0, "clip_name", "clip_vision"),),
    "UpscaleModelLoader": ((0, "model_name", "upscale_models"),),
    "StyleModelLoader": ((0, "style_model_name", "style_models"),),
    "GLIGENLoader": ((0, "gligen_name", "gligen"),),
    "HypernetworkLoader": ((0, "hypernetwork_name", "hypernetworks"),),
    "PhotoMakerLoader": ((0, "photomaker_model_name", "photomaker"),),
    "ModelPatchLoader": ((0, "name", "model_patches"),),
    "AudioEncoderLoader": ((0, "audio_encoder_name", "audio_encoders"),),
    "LatentUpscaleModelLoader": ((0, "model_name", "latent_upscale_models"),),
    "LTXAVTextEncoderLoader": (
        (0, "text_encoder", "text_encoders"),
        (1, "ckpt_name", "checkpoints"),
    ),
    "LTXVAudioVAELoader": ((0, "ckpt_name", "checkpoints"),),
    "ConditioningLoader": ((0, "conditioning_name", "embeddings"),),
    "LoadBackgroundRemovalModel": ((0, "bg_removal_name", "background_removal"),),
    "LoadMoGeModel": ((0, "model_name", "geometry_estimation"),),
    "LoadDA3Model": ((0, "model_name", "geometry_estimation"),),
    "FrameInterpolationModelLoader": ((0, "model_name", "frame_interpolation"),),
    "OpticalFlowLoader": ((0, "model_name", "optical_flow"),),
    "SAM3DBody_Loader": ((0, "model_file", "detection"),),
}


@dataclass
class ModelRequirement:
    directory: str
    name: str
    url: str = ""
    hash: str = ""
    hash_type: str = ""
    node: str = ""  # the type of the (first) node that needs it
    present: bool | None = None  # None: not checked
    in_store: bool | None = None  # missing, but the one-copy store has its sha256
    size: int | None = None  # bytes, when a launcher.json says
    sources: list[str] = field(default_factory=list)  # a launcher's URLs, tried in order

    @property
    def sha256(self) -> str:
        sha = self.hash_type.lower() in ("sha256", "") and SHA256.match(self.hash)
        return self.hash.lower() if sha else ""

    def as_json(self) -> dict:
        return {
            "directory": self.directory,
            "name": self.name,
            "url": self.url or None,
            "sha256": self.sha256 or None,
            "present": self.present,
            "in_store": self.in_store,
        }


@dataclass
class CustomNodePack:
    """A pack to install: a git repository at `commit`, or the registry's `cnr_id` at
    `version` (then `repository` may be ""). `reason` says why it was chosen (nodemap's
    rules); `alternatives` names the other providers of each of its node types."""

    repository: str
    commit: str = ""
    node_types: set[str] = field(default_factory=set)
    cnr_id: str = ""
    version: str = ""
    reason: str = ""
    alternatives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        # GitHub treats owner/repo case-insensitively; so does our key.
        return self.repository.lower() or "cnr:" + self.cnr_id

    def as_json(self) -> dict:
        return {
            "repository": self.repository,
            "commit": self.commit or None,
            "cnr_id": self.cnr_id or None,
            "version": self.version or None,
            "reason": self.reason,
            "node_types": sorted(self.node_types),
            "alternatives": {t: self.alternatives[t] for t in sorted(self.alternatives)},
        }


@dataclass
class Requirements:
    format: str
    models: list[ModelRequirement]
    custom_nodes: list[CustomNodePack]
    unknown_node_types: list[str]
    comfyui_commit: str = ""  # pinned by a launcher.json snapshot
    # Why custom nodes were resolved without ComfyUI-Manager's node map ("" when they were
    # not): only cnr_id/aux_id placed packs, every other non-core type is in `unknown`.
    custom_nodes_unavailable: str = ""

    def as_json(self) -> dict:
        return {
            "format": self.format,
            "models": [model.as_json() for model in self.models],
            "custom_nodes": [pack.as_json() for pack in self.custom_nodes],
            "unknown_node_types": self.unknown_node_types,
            "custom_nodes_unavailable": self.custom_nodes_unavailable or None,
        }


def analyze_file(path: Path, **options) -> Requirements:
    return analyze(read(path), **options)


def analyze(workflow: Workflow, *, node_map: nodemap.NodeMap | None = None) -> Requirements:
    """Everything `workflow` needs, from the file alone (no database: a caller that wants
    `present` asks the index, `comfyhub.library.index.mark_present`). Without
    ComfyUI-Manager's data the analysis still succeeds, with `custom_nodes_unavailable`
    saying why."""
    models = required_models(workflow)
    node_map = node_map or nodemap.default()
    packs, unknown = required_nodes(workflow, node_map)
    return Requirements(
        workflow.format, models, packs, unknown, workflow.comfyui_commit, node_map.unavailable
    )


# --- models -------------------------------------------------------------------------------


def required_models(workflow: Workflow) -> list[ModelRequirement]:
    """The model files `workflow` loads, one per (directory, name), sorted."""
    found: dict[tuple[str, str], ModelRequirement] = {}
    uses = list(active_nodes(workflow))
    for use in uses:
        for model in node_models(use):
            _merge(found, model)
    for model in top_level_models(workflow, uses):
        _merge(found, model)
    for file in workflow.files:
        model = ModelRequirement(file["directory"], file["name"], file["url"], file["sha256"])
        model.size, model.sources = file.get("size"), file.get("sources", [])
        _merge(found, model)
    return [found[key] for key in sorted(found)]


def node_models(use: "NodeUse") -> Iterator[ModelRequirement]:
    names = use.names()
    declared = [m for m in use.properties.get("models") or [] if _norm(m["name"]) in names]
    for model in declared:
        yield _declared(model, use.type)
    covered = {_norm(m["name"]) for m in declared}
    for index, input_name, directory in LOADERS.get(use.type, ()):
        value = use.value(index, input_name)
        if isinstance(value, str):
            check_model_path(value)
        if _is_file_name(value) and _norm(value) not in covered:
            yield ModelRequirement(directory, _norm(value), node=use.type)


def _is_file_name(value: object) -> bool:
    """Model files have a suffix; loader choices without one name no file (VAELoader's
    "pixel_space", "taesd", …)."""
    return isinstance(value, str) and "." in value.replace("\\", "/").rsplit("/", 1)[-1]


def top_level_models(workflow: Workflow, uses: list["NodeUse"]) -> Iterator[ModelRequirement]:
    for model in workflow.models:
        user = next((use for use in uses if _norm(model["name"]) in use.names()), None)
        if user:
            yield _declared(model, user.type)


def _declared(model: dict, node_type: str) -> ModelRequirement:
    return ModelRequirement(
        directory=model["directory"],
        name=_norm(model["name"]),
        url=model.get("url") or "",
        hash=model.get("hash") or "",
        hash_type=model.get("hash_type") or "",
        node=node_type,
    )


def _merge(found: dict, model: ModelRequirement) -> None:
    # The first mention wins; a later one only fills in what it left blank.
    known = found.setdefault((model.directory, model.name), model)
    if known is not model:
        known.url = known.url or model.url
        known.sources = list(dict.fromkeys([*known.sources, *model.sources]))
        if not known.hash:
            known.hash, known.hash_type = model.hash, model.hash_type


def _norm(name: str) -> str:
    """Windows-saved workflows spell subfolders with backslashes."""
    return name.replace("\\", "/")


# --- custom nodes -------------------------------------------------------------------------


def required_nodes(
    workflow: Workflow, node_map: nodemap.NodeMap
) -> tuple[list[CustomNodePack], list[str]]:
    """(custom node packs, unknown node types), both sorted. What names a node's pack
    (snapshot, cnr_id, aux_id, preemption) is settled for every node first, so that "already
    chosen for this workflow" counts those packs wherever their nodes sit in the file."""
    nodes = [n for n in all_nodes(workflow) if not needs_no_pack(n["type"], workflow)]
    core_here = {n["type"] for n in nodes if _properties(n).get("cnr_id") == nodemap.CORE_CNR_ID}
    custom = [n for n in nodes if not node_map.is_core(n["type"], _properties(n), core_here)]
    listed = _snapshot_packs(workflow, node_map)
    in_snapshot = {pack.repository.lower() for pack in listed.values() if pack.repository}
    packs: dict[str, CustomNodePack] = {}
    later = []
    for node in custom:
        choice = node_map.choose_named(node["type"], _properties(node), in_snapshot)
        if choice:
            _add(packs, node, choice)
        else:
            later.append(node)
    unknown = set()
    # A type only one pack provides forces that pack: settle those first, so that a shared
    # type goes to a pack the workflow needs anyway, wherever its nodes sit in the file.
    for node in sorted(later, key=lambda n: len(node_map.providers_of(n["type"]))):
        choice = node_map.choose_by_map(node["type"], set(packs))
        if choice:
            _add(packs, node, choice)
        else:
            unknown.add(node["type"])
    for key, pinned in listed.items():
        _merge_pack(packs.setdefault(key, pinned), pinned)
    return [packs[key] for key in sorted(packs)], sorted(unknown)


def needs_no_pack(node_type: str, workflow: Workflow) -> bool:
    return (
        node_type in nodemap.FRONTEND_ONLY
        or node_type in workflow.subgraphs
        or node_type.startswith(LEGACY_GROUP_PREFIXES)
    )


def _add(packs: dict, node: dict, choice: nodemap.Choice) -> None:
    new = CustomNodePack(choice.repository, cnr_id=choice.cnr_id, reason=choice.reason)
    pack = packs.setdefault(new.key, new)
    pack.node_types.add(node["type"])
    pack.commit = pack.commit or _pinned(node, choice.repository)
    if choice.cnr_id and not pack.version:
        pack.cnr_id, pack.version = choice.cnr_id, registry_version(_properties(node).get("ver"))
    others = [url for url in choice.providers if url.lower() != pack.key]
    if others:
        pack.alternatives[node["type"]] = others


def _snapshot_packs(workflow: Workflow, node_map: nodemap.NodeMap) -> dict[str, CustomNodePack]:
    """The launcher's snapshot as packs, by key: they are installed whatever they provide."""
    packs: dict[str, CustomNodePack] = {}
    for repository, commit in workflow.snapshot_nodes.items():
        pack = CustomNodePack(nodemap.clean_url(repository), commit, reason=nodemap.SNAPSHOT)
        packs[pack.key] = pack
    for cnr_id, version in workflow.snapshot_registry.items():
        repository = node_map.registry.get(cnr_id, "")
        pack = CustomNodePack(repository, cnr_id=cnr_id, version=version, reason=nodemap.SNAPSHOT)
        _merge_pack(packs.setdefault(pack.key, pack), pack)
    return packs


def _merge_pack(pack: CustomNodePack, pinned: CustomNodePack) -> None:
    """The snapshot's pins overrule what a node was saved with: the snapshot is the lock."""
    if pack is not pinned:
        pack.commit = pinned.commit or pack.commit
        pack.cnr_id = pinned.cnr_id or pack.cnr_id
        pack.version = pinned.version or pack.version
        pack.reason = nodemap.SNAPSHOT


def _pinned(node: dict, repository: str) -> str:
    """The commit a node was saved with: `ver` is a commit hash for git-installed packs (a
    version number for registry ones, which pins nothing here)."""
    properties = _properties(node)
    version = str(properties.get("ver") or "").lower()
    aux_id = properties.get("aux_id")
    from_git = isinstance(aux_id, str) and repository.lower().endswith("/" + aux_id.lower())
    return version if from_git and HEX_COMMIT.match(version) else ""


def _properties(node: dict) -> dict:
    return node.get("properties") or {}


# --- walking the graph as ComfyUI runs it -------------------------------------------------


@dataclass(frozen=True)
class NodeUse:
    """One active node as it runs: where it sits (instance ids joined by ':', as ComfyUI's
    execution ids) and the widget values in force there."""

    path: str
    type: str
    properties: dict
    values: list | dict
    extra: tuple = ()  # values passed in for widgets whose slot is unknown (custom nodes)

    def value(self, index: int, name: str):
        if isinstance(self.values, dict):
            return self.values.get(name)
        return self.values[index] if index < len(self.values) else None

    def names(self) -> set[str]:
        values = self.values.values() if isinstance(self.values, dict) else self.values
        return {_norm(v) for v in (*values, *self.extra) if isinstance(v, str)}


def active_nodes(workflow: Workflow) -> Iterator[NodeUse]:
    return _Walk(workflow).graph(workflow.nodes, "", {}, ())


class _Walk:
    def __init__(self, workflow: Workflow):
        self.workflow = workflow
        self.visited = 0
        self.promoted: dict[str, list] = {}

    def graph(self, nodes: list, prefix: str, overrides: dict, stack: tuple):
        """`overrides`: {node id: {widget: value}} passed in by the enclosing instance."""
        for node in (n for n in nodes if n.get("mode", 0) not in INACTIVE_MODES):
            self._count()
            node_id = node.get("id", node.get("index", ""))
            path, given = f"{prefix}{node_id}", overrides.get(str(node_id), {})
            inner = self._inner(node["type"], stack)
            if inner is None:
                yield _use(node, path, given)
                continue
            is_subgraph = node["type"] in self.workflow.subgraphs
            passed = self._passed(node, inner, given) if is_subgraph else {}
            yield from self.graph(inner["nodes"], path + ":", passed, (*stack, node["type"]))

    def _count(self) -> None:
        self.visited += 1
        if self.visited > MAX_EXPANDED:
            raise invalid(f"The workflow expands to more than {MAX_EXPANDED} nodes.")

    def _inner(self, node_type: str, stack: tuple) -> dict | None:
        """The subgraph (or legacy group node) a node stands for, if any."""
        name = node_type.removeprefix("workflow>").removeprefix("workflow/")
        groups = self.workflow.group_nodes if name != node_type else {}
        inner = self.workflow.subgraphs.get(node_type) or groups.get(name)
        if inner and node_type in stack:
            raise invalid(f"Subgraph {node_type} contains itself.")
        if inner and len(stack) >= MAX_NESTING:
            raise invalid(f"Subgraphs are nested deeper than {MAX_NESTING} levels.")
        return inner

    def _passed(self, node: dict, definition: dict, given: dict) -> dict:
        """{inner node id: {widget: value}} from the instance's promoted widget values."""
        values = node.get("widgets_values")
        promoted = self._promoted(definition)
        values = _skip_control_slots(values if isinstance(values, list) else [], len(promoted))
        passed: dict[str, dict] = {}
        for i, (name, targets) in enumerate(promoted):
            if name not in given and i >= len(values):
                continue
            value = given.get(name, values[i] if i < len(values) else None)
            for target, widget in targets:
                passed.setdefault(target, {})[widget] = value
        return passed

    def _promoted(self, definition: dict) -> list:
        """[(input name, [(inner node id, widget name), …])] for each subgraph input that
        feeds a widget, in input order: the order of the instance's widgets_values."""
        if definition["id"] not in self.promoted:
            self.promoted[definition["id"]] = _promoted_inputs(definition)
        return self.promoted[definition["id"]]


def _promoted_inputs(definition: dict) -> list:
    nodes = {str(n["id"]): n for n in definition.get("nodes") or []}
    targets: dict[int, list] = {}
    for link_id, origin, slot, target_id, target_slot in _links(definition):
        node = nodes.get(str(target_id))
        from_input = origin == SUBGRAPH_INPUT and isinstance(slot, int)
        widget = _widget_name(node, link_id, target_slot) if from_input else None
        if widget:
            targets.setdefault(slot, []).append((str(target_id), widget))
    inputs = definition.get("inputs") or []
    names = {slot: inputs[slot].get("name") for slot in targets if 0 <= slot < len(inputs)}
    return [(names[slot], targets[slot]) for slot in sorted(names) if isinstance(names[slot], str)]


def _links(definition: dict) -> Iterator[tuple]:
    """(id, origin id, origin slot, target id, target slot) from either serialisation."""
    for link in definition.get("links") or []:
        if isinstance(link, dict):
            keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
            link = [link.get(key) for key in keys]
        if isinstance(link, list) and len(link) >= 5:
            yield tuple(link[:5])


def _widget_name(node: dict | None, link_id, slot) -> str | None:
    inputs = (node or {}).get("inputs") or []
    entry = next((i for i in inputs if i.get("link") == link_id), None)
    if entry is None and isinstance(slot, int) and 0 <= slot < len(inputs):
        entry = inputs[slot]
    widget = (entry or {}).get("widget")
    return (
        widget.get("name")
        if isinstance(widget, dict) and isinstance(widget.get("name"), str)
        else None
    )


def _skip_control_slots(values: list, promoted: int) -> list:
    """Older frontends saved a seed's "control after generate" value after it on the
    instance as well; drop those while there are more values than promoted widgets."""
    kept = []
    for i, value in enumerate(values):
        surplus = len(values) - i - (promoted - len(kept))
        if surplus > 0 and kept and isinstance(value, str) and value in CONTROL_VALUES:
            continue
        kept.append(value)
    return kept


def _use(node: dict, path: str, given: dict) -> NodeUse:
    values = node.get("widgets_values") or []
    extra = []
    if given and isinstance(values, dict):
        values = {**values, **given}
    elif given:
        values = list(values)
        slots = {name: index for index, name, _ in LOADERS.get(node["type"], ())}
        for name, value in given.items():
            if slots.get(name, len(values)) < len(values):
                values[slots[name]] = value
            else:
                extra.append(value)
    return NodeUse(path, node["type"], _properties(node), values, tuple(extra))
