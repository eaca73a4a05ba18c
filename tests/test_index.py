import hashlib

import pytest

from comfyhub.library import index
from comfyhub.library.models import LocalModel

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _models(models_dir):
    return models_dir


def put(root, relative: str, data: bytes = b"weights"):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_indexes_files_by_folder_and_name_including_subfolders(models_dir):
    put(models_dir, "checkpoints/sdxl/base.safetensors")
    put(models_dir, "loras/style.safetensors.part")
    assert index.scan() == 1
    assert LocalModel.objects.get().name == "sdxl/base.safetensors"


def test_scan_forgets_files_that_vanished(models_dir):
    put(models_dir, "vae/a.bin")
    index.scan()
    (models_dir / "vae/a.bin").unlink()
    index.scan()
    assert not LocalModel.objects.exists()


def test_a_present_file_counts_by_directory_and_name(models_dir):
    put(models_dir, "vae/a.bin")
    assert index.is_present("vae", "a.bin") and not index.is_present("vae", "b.bin")


def test_a_known_hash_that_differs_means_not_present(models_dir):
    path = put(models_dir, "vae/a.bin")
    index.record(path, "0" * 64)
    assert not index.is_present("vae", "a.bin", sha256="1" * 64)
    assert index.is_present("vae", "a.bin", sha256="0" * 64)


def test_a_file_with_the_hash_under_another_name_is_not_present(models_dir):
    data = b"same weights"
    index.record(
        put(models_dir, "checkpoints/renamed.safetensors", data), hashlib.sha256(data).hexdigest()
    )
    sha = hashlib.sha256(data).hexdigest()
    assert not index.is_present("checkpoints", "original.safetensors", sha)
    assert index.is_present("checkpoints", "renamed.safetensors", sha)


def test_a_changed_file_forgets_its_old_hash(models_dir):
    path = put(models_dir, "vae/a.bin")
    index.record(path, "0" * 64)
    path.write_bytes(b"different and longer")
    assert index.record(path).sha256 == ""


def test_files_under_a_hidden_top_level_folder_are_not_models(models_dir):
    put(models_dir, ".downloads/registry/pack/1.0.0.zip")
    put(models_dir, "checkpoints/a.safetensors")
    assert index.scan() == 1
    assert LocalModel.objects.get().directory == "checkpoints"
