"""Reading workflows: the three formats, and hostile input refused as `validation`."""

import json
from pathlib import Path

import pytest

from comfyhub.workflows import analyze, parse
from recovery.classify import classify
from recovery.errors import JobError

DATA = Path(__file__).parent / "data" / "workflows"


def refused(data: bytes | str | dict) -> JobError:
    raw = json.dumps(data) if isinstance(data, dict) else data
    with pytest.raises(JobError) as error:
        analyze.required_models(parse.parse(raw))
    assert error.value.category == "validation"
    return error.value


def loader(value: str) -> dict:
    return {"nodes": [{"id": 1, "type": "VAELoader", "widgets_values": [value]}]}


def declaring(name: str, directory: str = "vae") -> dict:
    models = [{"name": name, "directory": directory, "url": "https://example.org/x"}]
    node = {"id": 1, "type": "X", "widgets_values": [name], "properties": {"models": models}}
    return {"nodes": [node]}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{nodes: [", "not valid JSON"),
        (b"\xff\xfe\x00not text", "not UTF-8"),
        (b"[1, 2]", "JSON object, not a list"),
        (b'"a workflow"', "JSON object, not a string"),
        ({"hello": "world"}, "not a ComfyUI workflow"),
        ({"nodes": "all of them"}, "nodes must be a list"),
        ({"nodes": [7]}, "nodes[0] must be a JSON object"),
        ({"nodes": [{"id": 1}]}, "has no node type"),
        ({"nodes": [{"id": 1, "type": "X", "widgets_values": 5}]}, "widgets_values"),
        ({"1": {"class_type": "KSampler", "inputs": {}}, "2": {"inputs": {}}}, "no class_type"),
        ({"workflow_json": [1]}, "has no workflow"),
    ],
)
def test_what_is_not_a_workflow_is_a_validation_error_naming_the_problem(data, says):
    assert says in refused(data).message


@pytest.mark.parametrize("node_id", [[1], {"n": 1}, None, True, 1.5, ""])
def test_node_ids_of_the_wrong_type_are_refused(node_id):
    error = refused({"nodes": [{"id": node_id, "type": "KSampler"}]})
    assert "id must be a number or a string" in error.message


def test_deeply_nested_lists_are_refused_whether_python_could_parse_them_or_not():
    assert "nested deeper than 64" in refused(b"[" * 65 + b"]" * 65).message
    assert "nested deeper than 64" in refused(b"[" * 200_000 + b"]" * 200_000).message
    parse.loads(b"[" * 64 + b"]" * 64)


def test_a_50_mb_file_is_refused_by_its_size(tmp_path):
    big = tmp_path / "huge.json"
    with big.open("wb") as handle:
        handle.truncate(50 * 2**20)
    with pytest.raises(JobError) as error:
        parse.read(big)
    assert error.value.category == "validation"
    assert "larger than 20 MB" in error.value.message


def test_oversized_text_is_refused_before_it_is_decoded():
    assert "larger than 20 MB" in refused(b" " * (parse.MAX_BYTES + 1)).message


@pytest.mark.parametrize(
    "data",
    [
        declaring("../../.ssh/id_rsa.safetensors"),
        declaring("/etc/passwd"),
        declaring("ok.safetensors", directory="../outside"),
        loader("..\\..\\windows\\x.safetensors"),
        loader("C:\\models\\x.safetensors"),
        loader("/abs/x.safetensors"),
        loader("~/x.safetensors"),
        loader("bad\x00name.safetensors"),
    ],
)
def test_model_names_with_dot_dot_or_absolute_paths_are_refused(data):
    assert "model name" in refused(data).message


def test_a_launcher_file_escaping_the_models_folder_is_refused():
    launcher = json.loads((DATA / "launcher.json").read_text())
    launcher["files"][0][0]["dest_relative_path"] = "models/../../etc/cron.d/x"
    assert "'..'" in refused(launcher).message


def launcher_with(*groups: list[dict]) -> dict:
    launcher = json.loads((DATA / "launcher.json").read_text())
    launcher["files"] = list(groups)
    return launcher


def alternative(dest: str, url: str | None, sha: str = "", size: int | None = None) -> dict:
    return {
        "download_url": url,
        "dest_relative_path": dest,
        "sha256_checksum": sha or None,
        "size": size,
    }


def test_a_launcher_file_keeps_every_alternative_as_a_source_in_order():
    a, b = "https://a.example/x.bin", "https://b.example/x.bin"
    group = [alternative("models/vae/x.bin", a, "a" * 64, 10), alternative("models/vae/x.bin", b)]
    [model] = parse.from_json(launcher_with(group)).files
    assert model["sources"] == [a, b] and model["url"] == a
    assert (model["sha256"], model["size"]) == ("a" * 64, 10)


def test_the_launcher_checkpoint_keeps_both_alternatives_and_the_input_file_is_kept():
    workflow = parse.read(DATA / "launcher.json")
    checkpoint = next(f for f in workflow.files if f["directory"] == "checkpoints")
    assert checkpoint["sources"] == ["https://example.org/files/opendalle_v11.safetensors"]
    assert checkpoint["sha256"].startswith("673887ace8a5")  # the URL-less one agrees on it
    assert checkpoint["size"] is None  # the two disagree on the size: the sha256 decides
    assert workflow.input_files == [
        {
            "path": "input/portrait.jpg",
            "url": "https://example.org/portrait.jpg",
            "sha256": "3bf2316058abe90fb0fcf76e46ccb0fee433a1eaac36359222cdf401f513bc54",
            "size": 20474,
            "sources": ["https://example.org/portrait.jpg"],
        }
    ]


def test_alternatives_that_disagree_on_the_sha256_keep_the_first_ones():
    first = alternative("input/a.png", "https://a.example/a.png", "a" * 64, 5)
    second = alternative("input/a.png", "https://b.example/a.png", "b" * 64, 7)
    [file] = parse.from_json(launcher_with([first, second])).input_files
    assert (file["sha256"], file["size"]) == ("a" * 64, 5)
    assert len(file["sources"]) == 2


def test_a_model_a_loader_names_gets_the_launchers_sources():
    models = analyze.required_models(parse.read(DATA / "launcher.json"))
    checkpoint = next(m for m in models if m.directory == "checkpoints")
    assert checkpoint.node == "CheckpointLoaderSimple"
    assert checkpoint.sources == ["https://example.org/files/opendalle_v11.safetensors"]


@pytest.mark.parametrize("dest", ["input/../../x", "input/../models/vae/x", "/input/x"])
def test_a_launcher_input_file_that_could_escape_the_input_folder_is_refused(dest):
    assert "file path" in refused(launcher_with([alternative(dest, "https://a.example/x")])).message


@pytest.mark.parametrize("dest", ["custom_nodes/a/__init__.py", "models/x.bin", "input/", "user/x"])
def test_a_launcher_file_outside_models_and_input_is_refused(dest):
    error = refused(launcher_with([alternative(dest, "https://a.example/x")]))
    assert "neither models/DIR/NAME nor input/NAME" in error.message


def test_alternatives_naming_two_destinations_are_refused():
    group = [alternative("input/a.png", None), alternative("input/b.png", "https://a.example/b")]
    assert "name one destination" in refused(launcher_with(group)).message


def test_parse_errors_classify_as_validation_with_the_message_for_the_user():
    with pytest.raises(JobError) as error:
        parse.parse(b"[]")
    failure = classify(error.value)
    assert failure.category == "validation"
    assert failure.message == "A workflow is a JSON object, not a list."


def test_a_missing_file_is_not_found_rather_than_invalid(tmp_path):
    with pytest.raises(JobError) as error:
        parse.read(tmp_path / "gone.json")
    assert error.value.category == "not_found"


def test_an_api_prompt_names_its_models_by_input_name():
    workflow = parse.read(DATA / "api_prompt.json")
    found = {(m.directory, m.name) for m in analyze.required_models(workflow)}
    assert workflow.format == "api"
    assert found == {
        ("checkpoints", "sdxl/sd_xl_base_1.0.safetensors"),
        ("text_encoders", "clip_l.safetensors"),
        ("text_encoders", "t5xxl_fp16.safetensors"),
    }


def test_a_launcher_json_brings_its_files_pinned_nodes_and_comfyui_commit():
    workflow = parse.read(DATA / "launcher.json")
    assert workflow.format == "launcher"
    assert workflow.comfyui_commit == "0a6a6b8ee0bb28ef1f0d3e9ee00cf5e4e4d8d2f1"
    pinned = "7d8adfa5a4d8a2c2f3c2e4d1a4b1e3f9c0d7a6b5"
    assert workflow.snapshot_nodes == {
        "https://github.com/cubiq/ComfyUI_IPAdapter_plus": pinned,
        "https://github.com/twri/sdxl_prompt_styler.git": "",
    }
    checkpoint = next(f for f in workflow.files if f["directory"] == "checkpoints")
    assert checkpoint["url"] == "https://example.org/files/opendalle_v11.safetensors"
    assert [f["directory"] for f in workflow.files] == ["ipadapter", "checkpoints"]


def test_a_ui_workflow_keeps_its_subgraphs_and_top_level_models():
    models = [{"name": "a.safetensors", "directory": "vae"}]
    subgraph = {"id": "sub-1", "nodes": [], "inputs": [], "links": []}
    workflow = parse.from_json(
        {"nodes": [], "models": models, "definitions": {"subgraphs": [subgraph]}}
    )
    assert (workflow.format, workflow.models, list(workflow.subgraphs)) == ("ui", models, ["sub-1"])


@pytest.mark.parametrize(
    "directory",
    ["custom_nodes", "zz: zz/\n    custom_nodes: x/\n    #", "a b", "vae#1", ".hidden", "x" * 65],
)
def test_a_models_folder_a_workflow_names_must_be_a_plain_folder_name(directory):
    # It becomes a key of extra_model_paths.yaml: no line of its own, no code folder.
    declared = [{"name": "x.py", "directory": directory, "url": "https://a.example/x.py"}]
    nodes = [{"id": 1, "type": "VAELoader", "widgets_values": ["x.py"], "properties": {}}]
    nodes[0]["properties"]["models"] = declared
    assert "models folder" in refused({"nodes": nodes}).message
    dest = f"models/{directory}/x.bin"
    assert "models folder" in refused(launcher_with([alternative(dest, "https://a/x")])).message
