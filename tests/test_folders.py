"""One list of models folders serves the analyzer, the finder and extra_model_paths.yaml."""

from pathlib import Path

from comfyhub.library import folders
from comfyhub.workflows.analyze import LOADERS


def test_the_folders_current_comfyui_added_are_in_the_list():
    for name in (
        "geometry_estimation",
        "background_removal",
        "frame_interpolation",
        "optical_flow",
        "detection",
    ):
        assert name in folders.FOLDERS


def test_every_folder_the_analyzer_reads_loaders_into_is_in_the_list():
    used = {directory for loader in LOADERS.values() for _, _, directory in loader}
    assert used - set(folders.FOLDERS) == set()


def test_a_directory_only_a_workflow_names_is_added_once_after_the_known_ones():
    found = folders.folders_for(["loras", "my_pack_models", "my_pack_models", ""])
    assert found[: len(folders.FOLDERS)] == list(folders.FOLDERS)
    assert found[len(folders.FOLDERS) :] == ["my_pack_models"]


def test_legacy_names_and_model_types_mean_the_folder_comfyui_reads_them_into():
    assert folders.canonical("unet/sub/x.safetensors") == "diffusion_models"
    assert folders.canonical("LORA") == "loras"
    assert folders.known("clip") == "text_encoders"
    assert folders.known("not_a_folder") == ""


def test_extra_model_paths_lists_legacy_folders_under_the_folder_they_feed_and_quotes_all():
    text = folders.extra_model_paths(Path("/m"), ["my_models"])
    assert '    "controlnet": "controlnet/\\nt2i_adapter/"' in text.splitlines()
    assert '    "my_models": "my_models/"' in text.splitlines()
    assert '    base_path: "/m"' in text.splitlines()
    assert not any(
        line.lstrip().startswith(('"t2i_adapter"', '"unet"')) for line in text.splitlines()
    )
