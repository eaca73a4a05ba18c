"""The requirement rules: active nodes only, declared models named by a widget, core
loaders without metadata, subgraph inputs overriding inner widgets, presence."""

import hashlib

import pytest

from comfyhub.library import index
from comfyhub.workflows import analyze, parse, templates
from recovery.errors import JobError


def node(node_id, node_type, values, mode=0, models=None, **inputs) -> dict:
    found = {"id": node_id, "type": node_type, "mode": mode, "widgets_values": values}
    found["properties"] = {"models": models} if models else {}
    found["inputs"] = [{"name": k, "link": v, "widget": {"name": k}} for k, v in inputs.items()]
    return found


def models_of(data: dict) -> set:
    return {(m.directory, m.name) for m in analyze.required_models(parse.from_json(data))}


def test_muted_and_bypassed_nodes_need_no_model():
    nodes = [
        node(1, "VAELoader", ["runs.safetensors"]),
        node(2, "VAELoader", ["muted.safetensors"], mode=2),
        node(3, "VAELoader", ["bypassed.safetensors"], mode=4),
    ]
    assert models_of({"nodes": nodes}) == {("vae", "runs.safetensors")}


def test_a_declared_model_counts_only_when_a_widget_of_its_node_names_it():
    declared = [
        {"name": "used.gguf", "directory": "unet", "url": "https://example.org/used.gguf"},
        {"name": "other.gguf", "directory": "unet", "url": "https://example.org/other.gguf"},
    ]
    data = {"nodes": [node(1, "UnetLoaderGGUF", ["used.gguf"], models=declared)]}
    [model] = analyze.required_models(parse.from_json(data))
    assert (model.directory, model.name, model.url) == ("unet", "used.gguf", declared[0]["url"])
    assert model.node == "UnetLoaderGGUF"


def test_top_level_models_count_when_an_active_node_names_them():
    top = [
        {"name": "a.safetensors", "directory": "loras", "url": "https://example.org/a"},
        {"name": "b.safetensors", "directory": "loras", "url": "https://example.org/b"},
    ]
    nodes = [node(1, "MyLora", ["a.safetensors", 1.0]), node(2, "MyLora", ["b.safetensors"], 4)]
    assert models_of({"nodes": nodes, "models": top}) == {("loras", "a.safetensors")}


def test_known_core_loaders_name_their_files_without_metadata():
    nodes = [
        node(1, "DualCLIPLoader", ["clip_l.safetensors", "t5xxl.safetensors", "flux", "default"]),
        node(2, "CheckpointLoader", ["v1-inference.yaml", "sd15.ckpt"]),
        node(3, "LoraLoader", ["sub\\style.safetensors", 1, 1]),
        node(4, "VAELoader", ["pixel_space"]),
    ]
    assert models_of({"nodes": nodes}) == {
        ("text_encoders", "clip_l.safetensors"),
        ("text_encoders", "t5xxl.safetensors"),
        ("checkpoints", "sd15.ckpt"),
        ("loras", "sub/style.safetensors"),
    }


def test_metadata_on_a_loader_wins_over_its_folder():
    declared = [{"name": "clip_l.safetensors", "directory": "clip", "hash": "AB" * 32}]
    data = {"nodes": [node(1, "CLIPLoader", ["clip_l.safetensors"], models=declared)]}
    [model] = analyze.required_models(parse.from_json(data))
    assert (model.directory, model.sha256) == ("clip", "ab" * 32)


def test_a_value_passed_into_a_subgraph_overrides_the_inner_widget():
    workflow = templates.load_template("image_qwen_image_2_1_image_edit")
    original = "qwen_image_2.1_int8_convrot.safetensors"
    assert ("diffusion_models", original) in models_of(workflow)
    [instance] = [n for n in workflow["nodes"] if original in (n.get("widgets_values") or [])]
    instance["widgets_values"][instance["widgets_values"].index(original)] = "swapped.safetensors"
    found = models_of(workflow)
    assert ("diffusion_models", "swapped.safetensors") in found
    assert ("diffusion_models", original) not in found


def test_a_bypassed_subgraph_instance_needs_none_of_its_models():
    workflow = templates.load_template("image_flux2")
    assert len(models_of(workflow)) == 4
    subgraphs = {s["id"] for s in workflow["definitions"]["subgraphs"]}
    for instance in (n for n in workflow["nodes"] if n["type"] in subgraphs):
        instance["mode"] = 4
    assert models_of(workflow) == set()


def subgraph(sub_id: str, nodes: list, inputs: list, links: list) -> dict:
    return {"id": sub_id, "nodes": nodes, "inputs": inputs, "links": links}


def test_values_pass_through_nested_subgraphs_to_the_loader_inside():
    inner = subgraph(
        "inner",
        [node(5, "UNETLoader", ["inner-default.safetensors", "default"], unet_name=20)],
        [{"name": "unet_name", "type": "COMBO"}],
        [{"id": 20, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0}],
    )
    outer = subgraph(
        "outer",
        [node(3, "inner", ["outer-default.safetensors"], unet_name=10)],
        [{"name": "model", "type": "COMBO"}],
        [[10, -10, 0, 3, 0, "COMBO"]],
    )
    root = node(1, "outer", ["chosen.safetensors"])
    data = {"nodes": [root], "definitions": {"subgraphs": [outer, inner]}}
    assert models_of(data) == {("diffusion_models", "chosen.safetensors")}
    assert [use.path for use in analyze.active_nodes(parse.from_json(data))] == ["1:3:5"]


def test_a_subgraph_that_contains_itself_is_refused():
    loop = subgraph("loop", [node(2, "loop", [])], [], [])
    data = {"nodes": [node(1, "loop", [])], "definitions": {"subgraphs": [loop]}}
    with pytest.raises(JobError) as error:
        models_of(data)
    assert error.value.category == "validation"
    assert "contains itself" in error.value.message


def test_subgraphs_multiplying_into_too_many_nodes_are_refused():
    level = [
        subgraph(f"s{i}", [node(j, f"s{i + 1}", []) for j in range(60)], [], []) for i in range(3)
    ]
    level.append(subgraph("s3", [node(1, "VAELoader", ["v.safetensors"])], [], []))
    data = {"nodes": [node(1, "s0", [])], "definitions": {"subgraphs": level}}
    with pytest.raises(JobError) as error:
        models_of(data)
    assert "more than 100000 nodes" in error.value.message


@pytest.mark.django_db
def test_presence_comes_from_the_models_folder_at_the_path_not_a_hash_elsewhere(settings, tmp_path):
    settings.MODELS_DIR = tmp_path
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "here.safetensors").write_bytes(b"weights")
    (tmp_path / "vae" / "renamed.bin").write_bytes(b"known")
    index.record(tmp_path / "vae" / "renamed.bin", hashlib.sha256(b"known").hexdigest())
    declared = [
        {"name": "wanted.bin", "directory": "vae", "hash": hashlib.sha256(b"known").hexdigest()}
    ]
    nodes = [
        node(1, "VAELoader", ["here.safetensors"]),
        node(2, "VAELoader", ["gone.safetensors"]),
        node(3, "VAELoader", ["wanted.bin"], models=declared),
    ]
    result = analyze.analyze(parse.from_json({"nodes": nodes}))
    assert {m.present for m in result.models} == {None}  # the analysis reads no database
    index.mark_present(result.models)
    assert {m.name: m.present for m in result.models} == {
        "here.safetensors": True,
        "gone.safetensors": False,
        "wanted.bin": False,  # its bytes are under another name, not where ComfyUI looks
    }
