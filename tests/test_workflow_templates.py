"""Acceptance on real data: every official template (the installed package) is read and its
model files found exactly as its own metadata declares them."""

import json

import pytest

from comfyhub.workflows import analyze, nodemap, parse, templates
from recovery.errors import JobError

NAMES = templates.names()


def test_the_template_package_is_installed_and_lists_hundreds_of_templates():
    assert templates.folder() is not None
    assert len(NAMES) > 600
    assert len(set(NAMES)) == len(NAMES)


def test_every_official_template_parses():
    failures = {}
    for name in NAMES:
        try:
            parse.read(templates.path(name))
        except Exception as exc:
            failures[name] = repr(exc)
    assert failures == {}


def test_json_files_the_index_does_not_list_are_refused_as_validation_errors():
    others = [p for p in templates.folder().glob("*.json") if p.stem not in set(NAMES)]
    assert any(p.name == "index.json" for p in others)
    for other in others:
        with pytest.raises(JobError) as error:
            parse.read(other)
        assert error.value.category == "validation", other.name


def declared_on_active_nodes(workflow: dict, only_types=None) -> set:
    """The acceptance rule written out plainly, independent of the analyzer: a node's
    properties.models, or a top-level model, counts when the node runs (not mode 2 or 4,
    inside subgraphs too) and one of its widget values names the file."""
    subgraphs = {s["id"]: s for s in workflow.get("definitions", {}).get("subgraphs", [])}
    found = set()

    def visit(nodes):
        for node in nodes:
            if node.get("mode", 0) in (2, 4):
                continue
            if node["type"] in subgraphs:
                visit(subgraphs[node["type"]]["nodes"])
                continue
            values = node.get("widgets_values") or []
            values = list(values.values()) if isinstance(values, dict) else values
            models = node.get("properties", {}).get("models", []) + workflow.get("models", [])
            if only_types is None or node["type"] in only_types:
                found.update((m["directory"], m["name"]) for m in models if m["name"] in values)

    visit(workflow["nodes"])
    return found


def found_by_analyzer(workflow: dict) -> set:
    return {(m.directory, m.name) for m in analyze.required_models(parse.from_json(workflow))}


def load(name: str) -> dict:
    return json.loads(templates.path(name).read_bytes())


def test_the_analyzer_finds_exactly_the_models_declared_on_active_nodes():
    differences, total = {}, 0
    for name in NAMES:
        workflow = load(name)
        expected, found = declared_on_active_nodes(workflow), found_by_analyzer(workflow)
        total += len(expected)
        if found != expected:
            differences[name] = {"extra": found - expected, "missing": expected - found}
    assert differences == {}
    assert total > 500


def strip_metadata(workflow: dict) -> dict:
    workflow.pop("models", None)
    graphs = [workflow, *workflow.get("definitions", {}).get("subgraphs", [])]
    for node in (node for graph in graphs for node in graph["nodes"]):
        node.get("properties", {}).pop("models", None)
    return workflow


def test_without_metadata_every_file_a_known_core_loader_names_is_still_found():
    missing, total = {}, 0
    for name in NAMES:
        workflow = load(name)
        expected = declared_on_active_nodes(workflow, only_types=analyze.LOADERS)
        total += len(expected)
        lost = expected - found_by_analyzer(strip_metadata(workflow))
        if lost:
            missing[name] = lost
    assert missing == {}
    assert total > 500


def test_template_nodes_marked_comfy_core_never_map_to_a_custom_repository():
    manager_only = nodemap.load()
    core_nodes = [
        node
        for name in NAMES
        for node in parse.all_nodes(parse.read(templates.path(name)))
        if (node.get("properties") or {}).get("cnr_id") == "comfy-core"
    ]
    wrong = {
        node["type"]
        for node in core_nodes
        if manager_only.repository(node["type"], node["properties"]) != nodemap.CORE
    }
    assert wrong == set()
    assert len(core_nodes) > 1000
