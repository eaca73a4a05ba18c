"""`manage.py analyze_workflow`: JSON lines, folders, the readable summary, exit codes."""

import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db

DATA = Path(__file__).parent / "data" / "workflows"
LINE_KEYS = {
    "file",
    "format",
    "models",
    "custom_nodes",
    "unknown_node_types",
    "custom_nodes_unavailable",
    "error",
}


@pytest.fixture
def folder(tmp_path, settings):
    settings.MODELS_DIR = tmp_path / "models"
    shutil.copytree(DATA, tmp_path / "in")
    (tmp_path / "in" / "index.json").write_text("[]")  # a catalog, not a workflow
    return tmp_path / "in"


def run(*args: str) -> tuple[int, list[dict]]:
    out = StringIO()
    try:
        call_command("analyze_workflow", *args, "--json", stdout=out)
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_prints_one_object_per_workflow_in_the_documented_shape(folder):
    code, lines = run(str(folder))
    assert code == 0
    assert [Path(line["file"]).name for line in lines] == ["api_prompt.json", "launcher.json"]
    assert all(set(line) == LINE_KEYS and line["error"] is None for line in lines)
    assert all(line["custom_nodes_unavailable"] is None for line in lines)
    launcher = lines[1]
    assert set(launcher["models"][0]) == {
        "directory",
        "name",
        "url",
        "sha256",
        "present",
        "in_store",
    }
    assert launcher["custom_nodes"][0] == {
        "repository": "https://github.com/cubiq/ComfyUI_IPAdapter_plus",
        "commit": "7d8adfa5a4d8a2c2f3c2e4d1a4b1e3f9c0d7a6b5",
        "cnr_id": None,
        "version": None,
        "reason": "listed in the launcher's snapshot",
        "node_types": ["IPAdapterModelLoader"],
        "alternatives": {},
    }


def test_a_folder_is_searched_recursively(folder):
    (folder / "deeper").mkdir()
    shutil.copy(folder / "api_prompt.json", folder / "deeper" / "again.json")
    code, lines = run(str(folder))
    assert (code, len(lines)) == (0, 3)


def test_a_bad_workflow_exits_1_and_the_others_are_still_reported(folder):
    (folder / "broken.json").write_text('{"nodes": [{"id": [1], "type": "KSampler"}]}')
    code, lines = run(str(folder / "broken.json"), str(folder / "api_prompt.json"))
    assert code == 1
    assert lines[0]["error"] == {
        "category": "validation",
        "message": "nodes[0].id must be a number or a string, not a list.",
    }
    assert (lines[0]["models"], lines[1]["error"]) == ([], None)


def test_a_missing_path_is_a_bad_invocation():
    with pytest.raises(CommandError) as error:
        call_command("analyze_workflow", "/no/such/workflow.json")
    assert error.value.returncode == 2


def test_without_json_a_readable_summary_names_models_packs_and_presence(folder, settings):
    (settings.MODELS_DIR / "checkpoints").mkdir(parents=True)
    (settings.MODELS_DIR / "checkpoints" / "opendalle_v11.safetensors").write_bytes(b"x")
    out = StringIO()
    call_command("analyze_workflow", str(folder / "launcher.json"), stdout=out)
    text = out.getvalue()
    assert "(ComfyUI-Launcher launcher.json)" in text
    assert "[present] checkpoints/opendalle_v11.safetensors" in text
    assert "[missing] ipadapter/ip-adapter-faceid_sdxl.bin" in text
    assert "custom nodes https://github.com/cubiq/ComfyUI_IPAdapter_plus @ 7d8adfa" in text
    assert ": IPAdapterModelLoader (listed in the launcher's snapshot)" in text


@pytest.mark.django_db(transaction=True)
def test_a_real_process_prints_json_lines_and_exits_with_the_documented_codes(tmp_path):
    env = subprocess_env(tmp_path)
    command = [sys.executable, str(ROOT / "manage.py"), "analyze_workflow", "--json"]
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    done = subprocess.run(
        [*command, str(DATA / "api_prompt.json"), str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1, done.stderr
    assert [line["format"] for line in lines] == ["api", None]
    assert lines[1]["error"]["category"] == "validation"
    missing = subprocess.run([*command, str(tmp_path / "nope")], env=env, capture_output=True)
    assert missing.returncode == 2
