"""Where a download's mirrors come from: a launcher file's alternatives, and the finder's
candidates that are the same file as the one the user chose."""

import json
from pathlib import Path

import pytest

from comfyhub.library import searches
from comfyhub.library.finder import mirrors_of, same_file
from comfyhub.library.models import Download
from comfyhub.projects import install, specs
from comfyhub.projects.forms import ResolveForm
from recovery.models import Job, Status

pytestmark = pytest.mark.django_db

LAUNCHER = Path(__file__).parent / "data" / "workflows" / "launcher.json"
SHA = "67" * 32
A, B, C = (f"https://{host}.example/x.safetensors" for host in "abc")


@pytest.fixture(autouse=True)
def folders(project_dirs):
    return project_dirs


def launcher_with_alternatives(*urls: str) -> dict:
    launcher = json.loads(LAUNCHER.read_text())
    dest = "models/checkpoints/opendalle_v11.safetensors"
    launcher["files"] = [
        [{"download_url": url, "dest_relative_path": dest, "sha256_checksum": SHA} for url in urls]
    ]
    return launcher


def candidate(url: str, sha256: str = "", size: int | None = 7, filename: str = "x.bin"):
    return {
        "source": "huggingface",
        "url": url,
        "filename": filename,
        "size": size,
        "sha256": sha256,
    }


def test_a_launcher_file_with_two_alternatives_becomes_one_download_with_two_sources():
    install.create("Two Mirrors", specs.from_launcher(launcher_with_alternatives(A, B)))
    download = Download.objects.get(dest="checkpoints/opendalle_v11.safetensors")
    assert download.sources == [A, B] and download.source_url == A
    assert download.expected_sha256 == SHA and Download.objects.count() == 1


def test_download_again_keeps_every_source_of_the_model():
    project = install.create("Again", specs.from_launcher(launcher_with_alternatives(A, B, C)))
    Download.objects.all().delete()
    download = project.download_again(project.spec["models"][0])
    assert download.sources == [A, B, C]


def test_candidates_with_the_same_sha256_are_mirrors_of_the_chosen_one():
    chosen = candidate(A, SHA)
    found = [chosen, candidate(B, SHA, size=None, filename="other.bin"), candidate(C, "ab" * 32)]
    assert mirrors_of(chosen, found) == [A, B]


def test_without_a_hash_the_same_size_and_file_name_make_a_mirror():
    chosen = candidate(A)
    assert same_file(chosen, candidate(B, SHA))
    assert not same_file(chosen, candidate(C, size=8))
    assert not same_file(chosen, candidate(C, filename="y.bin"))
    assert not same_file(candidate(A, size=None), candidate(B, size=None))


def test_same_size_and_name_make_a_mirror_only_when_a_sha256_will_verify_it():
    unhashed = candidate(B)
    assert mirrors_of(candidate(A, SHA), [candidate(A, SHA), unhashed]) == [A, B]
    chosen = candidate(A)
    assert mirrors_of(chosen, [chosen, unhashed, candidate(C, SHA)]) == [A]


def test_choosing_a_candidate_on_the_import_page_carries_its_mirrors_into_the_spec():
    missing = [{"directory": "checkpoints", "name": "x.bin", "url": "", "sha256": ""}]
    found = [candidate(A, SHA), candidate(B, filename="other.bin"), candidate(C, SHA)]
    search = Job.objects.create(
        kind=searches.KIND,
        params=searches.params_for(missing[0]),
        status=Status.SUCCEEDED,
        checkpoint_data={"candidates": found},
    )
    form = ResolveForm(missing, [search.pk], {"name": "Chosen", f"model_{search.pk}": "c0"})
    assert form.is_valid(), form.errors
    chosen = form.cleaned_data["chosen"]["checkpoints/x.bin"]
    assert chosen["url"] == A and chosen["sources"] == [A, C]
