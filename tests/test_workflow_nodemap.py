"""Node type -> repository: precedence, core protection, and where the map comes from."""

import json

import httpx
import pytest

from comfyhub.workflows import analyze, nodemap, parse
from comfyhub.workflows.nodemap import CORE, NodeMap
from recovery.classify import classify
from tests.conftest import free_port
from tests.fileserver import LoopbackServer

MAP = {
    CORE: [["KSampler", "LoadVideo"], {"title_aux": "ComfyUI"}],
    "https://github.com/a/pack-a": [["Shared", "LoadVideo", "OnlyA", "Pat_Listed"], {}],
    "https://github.com/b/pack-b.git": [["Shared"], {"preemptions": ["Shared"]}],
    "https://github.com/c/pattern-pack": [[], {"nodename_pattern": "^Pat_"}],
    "https://github.com/e/broken": [[], {"nodename_pattern": "(unclosed"}],
}
LIST = {"custom_nodes": [{"reference": "https://github.com/d/ComfyUI-Dee"}]}
STATS = {"https://github.com/a/pack-a": {"stars": 3}}
SMALL = NodeMap.from_data(MAP, LIST)


def test_core_types_never_map_to_a_custom_repository():
    assert SMALL.repository("LoadVideo", {}) == CORE
    assert SMALL.repository("LoadVideo", {"aux_id": "a/pack-a"}) == CORE
    assert SMALL.repository("KSampler", {"cnr_id": "comfyui-dee"}) == CORE


def test_a_node_marked_comfy_core_is_core_even_when_a_pack_lists_its_type():
    assert SMALL.repository("OnlyA", {"cnr_id": "comfy-core"}) == CORE
    assert SMALL.repository("OnlyA", {}, core_here={"OnlyA"}) == CORE


def test_cnr_id_comes_before_aux_id_which_comes_before_the_map():
    both = {"cnr_id": "comfyui-dee", "aux_id": "someone/fork"}
    assert SMALL.repository("OnlyA", both) == "https://github.com/d/ComfyUI-Dee"
    assert (
        SMALL.repository("OnlyA", {"aux_id": "someone/fork"}) == "https://github.com/someone/fork"
    )
    unplaced = {"cnr_id": "not-registered", "aux_id": "someone/fork"}
    assert SMALL.repository("OnlyA", unplaced) == "https://github.com/someone/fork"
    # The registry id alone still names the pack: the registry installs it by id.
    assert SMALL.repository("OnlyA", {"cnr_id": "not-registered"}) == ""


def test_the_map_prefers_preemptions_then_exact_lists_then_patterns():
    assert SMALL.repository("Shared", {}) == "https://github.com/b/pack-b"
    assert SMALL.repository("Pat_Listed", {}) == "https://github.com/a/pack-a"
    assert SMALL.repository("Pat_Other", {}) == "https://github.com/c/pattern-pack"
    assert SMALL.repository("Nobody", {}) is None


def test_a_registry_name_two_repositories_share_is_not_guessed():
    forks = {
        "https://github.com/one/same-name": [["X"], {}],
        "https://github.com/two/same-name": [["Y"], {}],
    }
    assert NodeMap.from_data(forks).repository("Z", {"cnr_id": "same-name"}) == ""


def requirements(*nodes, **extra) -> analyze.Requirements:
    workflow = parse.from_json({"nodes": list(nodes), **extra})
    return analyze.analyze(workflow, node_map=SMALL)


def test_unknown_types_are_reported_and_frontend_nodes_and_subgraphs_are_not():
    nodes = [
        {"id": i, "type": t, "mode": 4 if t == "Mystery" else 0}
        for i, t in enumerate(["Mystery", "Note", "MarkdownNote", "Reroute", "PrimitiveNode", "sg"])
    ]
    subgraphs = [{"id": "sg", "nodes": [{"id": 9, "type": "OnlyA"}], "inputs": [], "links": []}]
    result = requirements(*nodes, definitions={"subgraphs": subgraphs})
    assert result.unknown_node_types == ["Mystery"]
    assert [p.as_json() for p in result.custom_nodes] == [
        {
            "repository": "https://github.com/a/pack-a",
            "commit": None,
            "cnr_id": None,
            "version": None,
            "reason": "the only pack providing it",
            "node_types": ["OnlyA"],
            "alternatives": {},
        }
    ]


def test_a_git_installed_pack_is_pinned_to_the_commit_its_node_was_saved_with():
    commit = "4f9c2a1b7e3d5c6a8b9d0e1f2a3b4c5d6e7f8a9b"
    git = {"aux_id": "someone/fork", "ver": commit}
    registry = {"cnr_id": "comfyui-dee", "ver": "1.2.3"}
    result = requirements(
        {"id": 1, "type": "ForkNode", "properties": git},
        {"id": 2, "type": "DeeNode", "properties": registry},
    )
    pins = {p.repository: p.commit for p in result.custom_nodes}
    assert pins == {
        "https://github.com/someone/fork": commit,
        "https://github.com/d/ComfyUI-Dee": "",
    }


def test_the_installed_comfyui_manager_data_resolves_real_node_types():
    real = nodemap.load()
    assert real.repository("KSampler", {}) == CORE  # custom Fooocus packs list it too
    assert real.repository("LoaderGGUF", {}) == "https://github.com/calcuis/gguf"  # preemption
    assert (
        real.repository("DF_Integer", {}) == "https://github.com/Derfuu/Derfuu_ComfyUI_ModdedNodes"
    )
    assert real.repository("IPAdapterModelLoader", {}) == (
        "https://github.com/cubiq/ComfyUI_IPAdapter_plus"
    )


class ManagerData(LoopbackServer):
    """ComfyUI-Manager's data files over HTTP, answering If-None-Match like GitHub."""

    def __init__(self, files: dict[str, object]):
        super().__init__()
        self.files = {f"/{name}": json.dumps(body).encode() for name, body in files.items()}
        self.etag = '"v1"'

    def handle(self, h, record: dict) -> None:
        body = self.files.get(record["path"])
        if body is None:
            return self.reply(h, record, 404, b"not found")
        if record["headers"].get("if-none-match") == self.etag:
            return self.reply(h, record, 304, b"", {"ETag": self.etag})
        self.reply(h, record, 200, body, {"ETag": self.etag})


@pytest.fixture
def manager_data(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    files = {nodemap.MAP_FILE: MAP, nodemap.LIST_FILE: LIST, nodemap.STATS_FILE: STATS}
    with ManagerData(files) as server:
        yield server


def test_without_the_package_the_map_is_downloaded_then_revalidated_by_etag(manager_data):
    assert nodemap.load(manager_data.base + "/").repository("Shared", {}).endswith("pack-b")
    again = nodemap.load(manager_data.base + "/")
    asked = [(r["headers"].get("if-none-match"), r["status"]) for r in manager_data.requests]
    assert asked == [(None, 200)] * 3 + [('"v1"', 304)] * 3
    assert again.repository("Pat_X", {}) == "https://github.com/c/pattern-pack"


def test_a_changed_map_replaces_the_cached_copy(manager_data, tmp_path):
    nodemap.load(manager_data.base + "/")
    manager_data.etag = '"v2"'
    changed = {**MAP, "https://github.com/f/new": [["Fresh"], {}]}
    manager_data.files[f"/{nodemap.MAP_FILE}"] = json.dumps(changed).encode()
    assert (
        nodemap.load(manager_data.base + "/").repository("Fresh", {}) == "https://github.com/f/new"
    )
    assert (tmp_path / "cache" / "extension-node-map.json.etag").read_text() == '"v2"'


def test_a_broken_download_does_not_replace_the_cached_copy(manager_data, tmp_path):
    nodemap.load(manager_data.base + "/")
    manager_data.etag = '"v2"'
    manager_data.files[f"/{nodemap.MAP_FILE}"] = b'{"cut off'
    assert nodemap.load(manager_data.base + "/").repository("OnlyA", {}).endswith("pack-a")
    assert (tmp_path / "cache" / "extension-node-map.json.etag").read_text() == '"v1"'
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "custom-node-list.json",
        "custom-node-list.json.etag",
        "extension-node-map.json",
        "extension-node-map.json.etag",
        "github-stats.json",
        "github-stats.json.etag",
    ]


def test_when_the_source_is_down_the_cached_copy_is_used(manager_data):
    nodemap.load(manager_data.base + "/")
    manager_data.stop()
    assert nodemap.load(manager_data.base + "/").repository("OnlyA", {}).endswith("pack-a")


def test_without_a_cached_copy_an_unreachable_source_is_a_network_error(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    with pytest.raises(httpx.ConnectError) as error:
        nodemap.load(f"http://127.0.0.1:{free_port()}/")
    assert classify(error.value).category == "network"
