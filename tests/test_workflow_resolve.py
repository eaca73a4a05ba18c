"""Node type -> pack by the issue's order, with the reason kept (nodemap.choose, analyze)."""

import json

import pytest

from comfyhub.projects import specs
from comfyhub.workflows import analyze, nodemap, parse
from comfyhub.workflows.nodemap import CORE, NodeMap
from recovery.errors import JobError
from tests.conftest import ROOT

ALPHA, BETA, GAMMA = (
    "https://github.com/a/alpha",
    "https://github.com/b/beta",
    "https://github.com/c/gamma",
)
MAP = {
    CORE: [["KSampler"], {}],
    ALPHA: [["Shared", "AlphaOnly"], {}],
    BETA: [["Shared", "Preempted"], {}],
    GAMMA: [["Shared", "Preempted"], {"preemptions": ["Preempted"]}],
}
STATS = {BETA: {"stars": 50}, ALPHA: {"stars": 5}, "not a dict": 3}
SMALL = NodeMap.from_data(MAP, None, (), STATS)
COMMIT = "4f9c2a1b7e3d5c6a8b9d0e1f2a3b4c5d6e7f8a9b"


def node(node_type: str, **properties) -> dict:
    return {"id": node_type, "type": node_type, "properties": properties}


def packs(*nodes, node_map=SMALL, snapshot=None) -> dict[str, dict]:
    """{repository or cnr:id: the pack's JSON} for a UI workflow (a launcher with snapshot)."""
    graph = {"nodes": list(nodes), "links": []}
    data = {"workflow_json": graph, "snapshot_json": snapshot} if snapshot else graph
    found, _ = analyze.required_nodes(parse.from_json(data), node_map)
    return {pack.key: pack.as_json() for pack in found}


def test_a_pack_the_snapshot_lists_wins_and_the_others_are_not_installed():
    found = packs(node("Shared"), snapshot={"git_custom_nodes": {ALPHA + ".git": {"hash": COMMIT}}})
    assert list(found) == [ALPHA]
    assert found[ALPHA]["reason"] == "listed in the launcher's snapshot"
    assert found[ALPHA]["commit"] == COMMIT
    assert found[ALPHA]["alternatives"] == {"Shared": [BETA, GAMMA]}


def test_a_registry_pack_the_snapshot_lists_wins_at_its_version():
    found = packs(node("Shared"), snapshot={"cnr_custom_nodes": {"gamma": "2.0.1"}})
    assert list(found) == [GAMMA]
    assert (found[GAMMA]["cnr_id"], found[GAMMA]["version"]) == ("gamma", "2.0.1")
    assert found[GAMMA]["reason"] == "listed in the launcher's snapshot"


def test_a_snapshot_pack_providing_none_of_the_types_is_still_installed():
    snapshot = {"git_custom_nodes": {"https://github.com/x/extra": {"hash": None}}}
    found = packs(node("AlphaOnly"), snapshot=snapshot)
    assert found["https://github.com/x/extra"]["reason"] == "listed in the launcher's snapshot"
    assert found["https://github.com/x/extra"]["node_types"] == []
    assert found[ALPHA]["node_types"] == ["AlphaOnly"]


def test_rule_2_the_nodes_registry_id_names_the_pack_and_its_version():
    found = packs(node("Shared", cnr_id="gamma", ver="1.0.2"))
    assert found[GAMMA]["reason"] == "the workflow names registry id gamma"
    assert (found[GAMMA]["cnr_id"], found[GAMMA]["version"]) == ("gamma", "1.0.2")
    assert found[GAMMA]["alternatives"] == {"Shared": [ALPHA, BETA]}


def test_a_registry_id_the_map_cannot_place_still_yields_a_pack_by_that_id():
    found = packs(node("Mystery", cnr_id="Elsewhere-Pack", ver="0.3.0"))
    assert found == {
        "cnr:elsewhere-pack": {
            "repository": "",
            "commit": None,
            "cnr_id": "elsewhere-pack",
            "version": "0.3.0",
            "reason": "the workflow names registry id elsewhere-pack",
            "node_types": ["Mystery"],
            "alternatives": {},
        }
    }


def test_rule_3_the_nodes_aux_id_names_the_repository_and_a_hex_ver_stays_its_commit():
    found = packs(node("Shared", aux_id="someone/fork", ver=COMMIT))
    fork = found["https://github.com/someone/fork"]
    assert fork["reason"] == "the workflow names repository someone/fork"
    assert (fork["commit"], fork["version"], fork["cnr_id"]) == (COMMIT, None, None)


def test_a_hex_ver_is_no_registry_version():
    found = packs(node("Shared", cnr_id="gamma", ver="4f9c2a1"))
    assert (found[GAMMA]["version"], found[GAMMA]["commit"]) == (None, None)


def test_rule_4_comfyui_managers_preemption_beats_stars_and_listing_order():
    found = packs(node("Preempted"))
    assert found[GAMMA]["reason"] == "ComfyUI-Manager prefers it for this node"
    assert found[GAMMA]["alternatives"] == {"Preempted": [BETA]}


def test_rule_5_a_pack_already_chosen_provides_a_shared_type_wherever_it_sits():
    found = packs(node("Shared"), node("AlphaOnly"))
    assert list(found) == [ALPHA]
    assert found[ALPHA]["node_types"] == ["AlphaOnly", "Shared"]
    chosen = SMALL.choose_by_map("Shared", {ALPHA})
    assert (chosen.repository, chosen.reason) == (ALPHA, "already chosen for this workflow")


def test_rule_6_the_most_starred_provider_wins():
    found = packs(node("Shared"))
    assert list(found) == [BETA]
    assert found[BETA]["reason"] == "most starred of 3 providers"


def test_rule_7_without_stars_the_first_listed_wins():
    found = packs(node("Shared"), node_map=NodeMap.from_data(MAP))
    assert found[ALPHA]["reason"] == "first listed"
    assert packs(node("AlphaOnly"))[ALPHA]["reason"] == "the only pack providing it"


def test_patterns_count_as_providers_after_the_listed_ones():
    patterned = {**MAP, "https://github.com/p/pat": [[], {"nodename_pattern": "^Sha"}]}
    node_map = NodeMap.from_data(patterned)
    assert node_map.providers_of("Shared") == (ALPHA, BETA, GAMMA, "https://github.com/p/pat")
    assert node_map.providers_of("Shadow") == ("https://github.com/p/pat",)


def test_core_types_are_never_resolved_to_a_pack():
    assert packs(node("KSampler", cnr_id="gamma"), node("Shared", cnr_id="comfy-core")) == {}


def test_the_img2img_launcher_picks_the_styler_its_snapshot_lists():
    launcher = json.loads((ROOT / "tests/data/workflows/launcher.json").read_text())
    launcher["workflow_json"]["nodes"].append(node("SDXLPromptStyler"))
    found, _ = analyze.required_nodes(parse.from_json(launcher), nodemap.load())
    styler = next(pack for pack in found if "SDXLPromptStyler" in pack.node_types)
    assert styler.repository == "https://github.com/twri/sdxl_prompt_styler"
    assert styler.reason == "listed in the launcher's snapshot"
    assert not any("regiellis" in pack.repository for pack in found)
    assert (
        "https://github.com/regiellis/ComfyUI-SDXL-Adherence"
        in styler.alternatives["SDXLPromptStyler"]
    )


def test_a_launcher_snapshot_brings_its_registry_packs():
    launcher = {
        "workflow_json": {"nodes": []},
        "snapshot_json": {"cnr_custom_nodes": {"A-b": "1.2.3"}},
    }
    assert parse.from_json(launcher).snapshot_registry == {"a-b": "1.2.3"}


@pytest.mark.parametrize(
    "pinned, wrong",
    [({"../x": "1.0.0"}, "is not a registry id"), ({"ok": "--force"}, "must be like 1.2.3")],
)
def test_a_bad_registry_pin_in_a_snapshot_is_refused(pinned, wrong):
    launcher = {"workflow_json": {"nodes": []}, "snapshot_json": {"cnr_custom_nodes": pinned}}
    with pytest.raises(JobError) as refused:
        parse.from_json(launcher)
    assert refused.value.category == "validation" and wrong in refused.value.message


@pytest.mark.django_db
def test_a_cnr_id_and_ver_node_reaches_the_project_spec_with_its_version():
    workflow = {
        "nodes": [node("ImpactWildcardProcessor", cnr_id="comfyui-impact-pack", ver="8.8.1")]
    }
    [entry] = specs.from_workflow(workflow, "impact")["nodes"]
    assert entry == {
        "repository": "https://github.com/ltdrdata/ComfyUI-Impact-Pack",
        "commit": "",
        "cnr_id": "comfyui-impact-pack",
        "version": "8.8.1",
        "reason": "the workflow names registry id comfyui-impact-pack",
        "node_types": ["ImpactWildcardProcessor"],
    }
