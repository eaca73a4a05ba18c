"""One copy per file: verified bytes live once per sha256 in the store; names are hard links."""

import hashlib
import json
import os
import stat
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from comfyhub.library import index, store
from comfyhub.library.models import Download, LocalModel
from comfyhub.library.paths import models_path
from comfyhub.workflows.analyze import ModelRequirement
from recovery.engine import run_foreground
from recovery.models import Status
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db(transaction=True)

DATA = os.urandom(1024 * 1024 + 7)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def fetch(url: str, dest: str, sha256: str = SHA):
    download, _ = Download.objects.request(url, dest, sha256)
    job = run_foreground(download.job_id)
    download.refresh_from_db()
    return download, job


def two_names(server, models_dir) -> tuple[Path, Path]:
    url = server.add("/m.bin", DATA)
    fetch(url, "checkpoints/a.safetensors")
    fetch(url, "checkpoints/sub/b.safetensors")
    return models_dir / "checkpoints/a.safetensors", models_dir / "checkpoints/sub/b.safetensors"


def prune_store(*args: str) -> dict:
    out = StringIO()
    call_command("prune_store", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_two_names_of_one_sha256_share_one_inode_with_the_store(server, models_dir):
    a, b = two_names(server, models_dir)
    entry = store.entry_path(SHA)
    assert a.stat().st_ino == b.stat().st_ino == entry.stat().st_ino
    assert entry.stat().st_nlink == 3 and entry.read_bytes() == DATA
    assert entry.relative_to(models_dir).parts[:3] == (".store", "sha256", SHA[:2])


def test_the_second_download_of_a_known_sha256_makes_no_request(server, models_dir):
    url = server.add("/m.bin", DATA)
    fetch(url, "checkpoints/a.safetensors")
    asked = len(server.requests)
    download, job = fetch(url, "loras/b.safetensors")
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert (
        len(server.requests) == asked and (models_dir / "loras/b.safetensors").read_bytes() == DATA
    )
    assert LocalModel.objects.get(directory="loras").sha256 == SHA


def test_deleting_one_name_keeps_the_other_readable_with_the_same_bytes(server, models_dir):
    a, b = two_names(server, models_dir)
    a.unlink()
    assert b.read_bytes() == DATA and store.entry_path(SHA).stat().st_nlink == 2


def test_store_entries_are_read_only_so_no_name_writes_through_to_another(server, models_dir):
    a, _ = two_names(server, models_dir)
    assert stat.S_IMODE(store.entry_path(SHA).stat().st_mode) == 0o444
    assert stat.S_IMODE(a.stat().st_mode) == 0o444


def test_a_dry_run_prune_lists_only_unlinked_entries_and_deletes_nothing(server, models_dir):
    kept = server.add("/kept.bin", b"kept bytes")
    fetch(kept, "vae/kept.bin", hashlib.sha256(b"kept bytes").hexdigest())
    a, b = two_names(server, models_dir)
    a.unlink(), b.unlink()
    report = prune_store()
    entry = store.entry_path(SHA)
    assert report["entries"] == [{"path": str(entry), "bytes": len(DATA)}]
    assert report["bytes"] == len(DATA) and not report["deleted"] and entry.exists()


def test_a_dry_run_says_what_it_would_free_and_how_to_delete(server, models_dir):
    a, b = two_names(server, models_dir)
    a.unlink(), b.unlink()
    out = StringIO()
    call_command("prune_store", stdout=out)
    assert "Would free 1.0 MB (1,048,583 bytes)" in out.getvalue() and "--yes" in out.getvalue()


def test_prune_with_yes_deletes_unlinked_entries_only(server, models_dir):
    kept_sha = hashlib.sha256(b"kept bytes").hexdigest()
    fetch(server.add("/kept.bin", b"kept bytes"), "vae/kept.bin", kept_sha)
    a, b = two_names(server, models_dir)
    a.unlink(), b.unlink()
    (models_dir / "vae/half.bin.part").write_bytes(b"half")
    (models_dir / "vae/lonely.bin").write_bytes(b"one name, not in the store")
    report = prune_store("--yes")
    assert report["deleted"] and report["freed"] == len(DATA)
    assert not store.entry_path(SHA).exists() and store.entry_path(kept_sha).exists()
    assert (models_dir / "vae/half.bin.part").exists() and (models_dir / "vae/lonely.bin").exists()


def test_a_name_is_not_present_when_only_another_name_has_its_sha256(server, models_dir):
    fetch(server.add("/m.bin", DATA), "checkpoints/a.safetensors")
    assert not index.is_present("checkpoints", "b.safetensors", SHA)
    wanted = ModelRequirement("checkpoints", "b.safetensors", hash=SHA)
    index.mark_present([wanted])
    assert wanted.present is False and wanted.in_store is True


def test_a_missing_model_in_the_store_is_linked_into_place_and_indexed(server, models_dir):
    fetch(server.add("/m.bin", DATA), "checkpoints/a.safetensors")
    assert index.link_from_store("loras", "x.safetensors", SHA.upper())
    assert index.is_present("loras", "x.safetensors", SHA)
    assert (models_dir / "loras/x.safetensors").stat().st_ino == store.entry_path(SHA).stat().st_ino
    assert not index.link_from_store("loras", "y.safetensors", "0" * 64)


def test_a_store_entry_corrupted_on_disk_is_not_linked_and_is_replaced(server, models_dir):
    url = server.add("/m.bin", DATA)
    fetch(url, "checkpoints/a.safetensors")
    entry = store.entry_path(SHA)
    entry.write_bytes(b"x" * len(DATA))  # same size, other bytes (root ignores 0o444)
    asked = len(server.requests)
    _, job = fetch(url, "loras/b.safetensors")
    assert job.status == Status.SUCCEEDED and len(server.requests) > asked
    b = models_dir / "loras/b.safetensors"
    assert b.read_bytes() == DATA and entry.read_bytes() == DATA
    assert entry.stat().st_ino == b.stat().st_ino


def test_a_store_entry_of_the_wrong_size_is_not_linked(models_dir):
    entry = store.entry_path(SHA)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(DATA[:-1])
    assert store.link_into(models_dir / "vae/a.bin", SHA) is None
    assert not (models_dir / "vae/a.bin").exists()


def test_a_wrong_file_at_the_destination_is_replaced_from_the_store(server, models_dir):
    url = server.add("/m.bin", DATA)
    fetch(url, "checkpoints/a.safetensors")
    (models_dir / "vae").mkdir()
    (models_dir / "vae/b.bin").write_bytes(b"an old, different file")
    asked = len(server.requests)
    _, job = fetch(url, "vae/b.bin")
    assert job.status == Status.SUCCEEDED and len(server.requests) == asked
    assert (models_dir / "vae/b.bin").read_bytes() == DATA
    assert not [p for p in (models_dir / "vae").iterdir() if p.name != "b.bin"]


def test_stats_count_every_name_beyond_the_first_as_bytes_saved(server, models_dir):
    _, b = two_names(server, models_dir)
    assert store.stats() == store.Stats(files=1, stored=len(DATA), saved=len(DATA))
    b.unlink()
    assert store.stats().saved == 0


def test_the_downloads_page_shows_the_bytes_saved(server, models_dir, client):
    two_names(server, models_dir)
    response = client.get("/downloads/")
    assert response.status_code == 200
    assert b"Bytes saved by the one-copy store: <strong>1.0 MB</strong>" in response.content


def test_the_admin_model_list_shows_the_bytes_saved(server, models_dir, admin_client):
    two_names(server, models_dir)
    response = admin_client.get("/admin/library/localmodel/")
    assert response.status_code == 200 and response.context["store"].saved == len(DATA)
    assert b"Bytes saved by the one-copy store" in response.content


def test_a_scan_adopts_files_whose_sha256_is_known_into_the_store(models_dir):
    path = models_dir / "vae/a.bin"
    path.parent.mkdir()
    path.write_bytes(DATA)
    index.record(path, SHA)
    (models_dir / "vae/unhashed.bin").write_bytes(b"no hash known")
    assert index.scan() == 2
    assert store.entry_path(SHA).stat().st_ino == path.stat().st_ino
    assert store.stats().files == 1


@pytest.fixture
def elsewhere(models_dir):
    """A folder on another filesystem than the models folder's (as a mount point inside
    it would be): the first writable one of a few usual places."""
    for place in ("/dev/shm", "/run", "/tmp", "/var/tmp", str(Path.home())):
        try:
            folder = Path(place) / f"comfyhub-store-{os.getpid()}"
            folder.mkdir()
        except OSError:
            continue
        if folder.stat().st_dev != models_dir.stat().st_dev:
            break
        folder.rmdir()
    else:
        pytest.skip(
            "needs a writable folder on another filesystem than the models folder "
            "(/dev/shm is a tmpfs on Debian and most Linux machines)"
        )
    try:
        yield folder
    finally:
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()


def test_across_filesystems_a_file_is_left_alone_and_never_copied_into_the_store(elsewhere):
    path = elsewhere / "a.bin"
    path.write_bytes(DATA)
    store.keep(path, SHA)
    assert not store.entry_path(SHA).exists() and path.read_bytes() == DATA
    assert path.stat().st_mode & stat.S_IWUSR and not list(store.root().rglob("*.tmp"))


def test_across_filesystems_the_store_does_not_satisfy_a_name(models_dir, elsewhere):
    stored(models_dir)
    assert store.link_into(elsewhere / "b.bin", SHA) is None
    assert not (elsewhere / "b.bin").exists()


def test_a_store_entry_pruned_just_before_its_link_lets_the_name_be_downloaded(
    models_dir, monkeypatch
):
    stored(models_dir).unlink()
    link = os.link

    def pruned_first(source, target, *args, **kwargs):
        if Path(source) == store.entry_path(SHA):
            Path(source).unlink()  # prune_store, between link_into's check and its link
        return link(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "link", pruned_first)
    dest = models_dir / "checkpoints/dreamy.safetensors"
    assert store.link_into(dest, SHA) is None and not dest.exists()


def test_a_download_succeeds_when_its_store_entry_cannot_be_written(server, models_dir):
    # A folder where the entry belongs: the rename into the store fails (as on a store
    # folder that is not writable), after the file is already verified and in place.
    (store.entry_path(SHA) / "x").mkdir(parents=True)
    download, job = fetch(server.add("/m.bin", DATA), "checkpoints/a.safetensors")
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert download.path.read_bytes() == DATA
    assert not list(store.entry_path(SHA).parent.glob("*.tmp"))


def test_a_download_succeeds_when_the_store_s_sha256_folder_is_a_file(server, models_dir):
    store.root().parent.mkdir(parents=True)
    store.root().write_bytes(b"not a folder")
    url = server.add("/m.bin", DATA)
    download, job = fetch(url, "checkpoints/a.safetensors")
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    again, job = fetch(url, "checkpoints/b.safetensors")
    assert job.status == Status.SUCCEEDED and again.path.read_bytes() == DATA


def stored(models_dir, name: str = "checkpoints/other.safetensors") -> Path:
    """DATA under `name`, kept in the store, as a finished download leaves it."""
    path = models_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DATA)
    store.keep(path, SHA)
    return path


def needing_dreamy() -> dict:
    """A workflow whose checkpoint loader names dreamy.safetensors, declared with SHA."""
    model = {"name": "dreamy.safetensors", "directory": "checkpoints", "hash": SHA}
    node = {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "properties": {}}
    node["widgets_values"], node["properties"]["models"] = ["dreamy.safetensors"], [model]
    return {"nodes": [node], "links": []}


def test_the_import_page_says_a_model_in_the_store_is_linked_at_once(client, pages_dir):
    stored(pages_dir / "models")
    workflow = needing_dreamy()
    confirm = client.post("/projects/import/", {"text": json.dumps(workflow)})["Location"]
    html = client.get(confirm).content.decode()
    assert "in the store, linked at once" in html and "is missing" not in html


def test_analyze_workflow_says_a_missing_model_is_in_the_store(models_dir, tmp_path):
    stored(models_dir)
    (tmp_path / "w.json").write_text(json.dumps(needing_dreamy()))
    out = StringIO()
    call_command("analyze_workflow", str(tmp_path / "w.json"), stdout=out)
    assert "[in the store, linked at once] checkpoints/dreamy.safetensors" in out.getvalue()


def test_the_install_links_a_model_in_the_store_without_a_download(pages_dir):
    from comfyhub.projects import install

    stored(pages_dir / "models")
    model = {"directory": "checkpoints", "name": "dreamy.safetensors", "url": "", "sha256": SHA}
    project = install.create("Stored", {"models": [model], "nodes": [], "comfyui": {}})
    project.folder.mkdir(parents=True, exist_ok=True)
    assert install.fetch_model(project, model) == Status.SUCCEEDED
    linked = pages_dir / "models/checkpoints/dreamy.safetensors"
    assert linked.stat().st_ino == store.entry_path(SHA).stat().st_ino
    assert not Download.objects.exists()


def test_a_symbolic_link_in_the_models_folder_never_joins_the_store(models_dir):
    (models_dir / "vae").mkdir()
    (models_dir / "vae/real.bin").write_bytes(DATA)
    (models_dir / "vae/alias.bin").symlink_to(models_dir / "vae/real.bin")
    store.keep(models_dir / "vae/alias.bin", SHA)
    assert not store.has(SHA)


def test_prune_removes_stale_temporary_names_in_the_store_so_their_entries_can_go(models_dir):
    path = stored(models_dir)
    entry = store.entry_path(SHA)
    left = entry.with_name(f"{SHA}.{'0' * 32}.tmp")
    os.link(path, left)  # a keep killed between its link and its rename
    assert store.prune_temporaries() == 0 and left.exists()  # a fresh one may be in use
    assert store.prune_temporaries(now=time.time() + store.STALE_TMP_SECONDS + 1) == 0
    assert not left.exists() and entry.exists() and path.read_bytes() == DATA


def test_a_link_tmp_left_beside_a_name_is_removed_on_the_next_keep_of_that_name(models_dir):
    path = stored(models_dir)
    left = path.with_name(path.name + store.LINK_TMP)
    os.link(store.entry_path(SHA), left)  # a link killed before its rename
    store.keep(path, SHA)  # the name is already the entry's: nothing else to do
    assert not left.exists() and store.entry_path(SHA).stat().st_nlink == 2


@pytest.mark.parametrize("dest", [".store/sha256/ab/x.bin", ".hidden/x.bin", "cheats/x.bin"])
def test_a_destination_in_a_hidden_folder_of_the_models_folder_is_refused(models_dir, dest):
    (models_dir / ".store").mkdir()
    (models_dir / "cheats").symlink_to(models_dir / ".store")
    with pytest.raises(CommandError, match=r"hidden folder '.*' of the models folder"):
        call_command("download", "http://127.0.0.1:9/x.bin", "--dest", dest)
    assert models_path(".downloads/input/a.png", models_dir).parent.name == "input"


def test_a_store_that_is_a_symbolic_link_is_never_written_or_pruned(models_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sha256").mkdir(parents=True)
    (models_dir / ".store").symlink_to(elsewhere)
    path = models_dir / "vae/a.bin"
    path.parent.mkdir()
    path.write_bytes(DATA)
    store.keep(path, SHA)
    assert list((elsewhere / "sha256").iterdir()) == [] and path.stat().st_nlink == 1
    with pytest.raises(CommandError, match="is a symbolic link"):
        prune_store("--yes")


def test_a_download_that_is_no_model_stays_writable_and_out_of_the_store(server, models_dir):
    download, job = fetch(server.add("/m.bin", DATA), ".downloads/input/photo.png")
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == DATA
    assert download.path.stat().st_mode & stat.S_IWUSR and not store.has(SHA)
