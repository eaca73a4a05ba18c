"""The official templates as a catalog (titles, categories, models) and as workflows."""

import importlib.util
import json

import pytest

from comfyhub.workflows import analyze, catalog, parse, templates
from recovery.errors import JobError


def test_the_catalog_follows_the_index_categories_and_titles():
    index = json.loads((templates.folder() / "index.json").read_text())
    groups = catalog.catalog()
    assert [c.title for c in groups] == [group["title"] for group in index]
    first = index[0]["templates"][0]
    assert groups[0].templates[0].title == first["title"]
    assert groups[0].templates[0].category == index[0]["title"]
    assert sum(len(c.templates) for c in groups) == len(templates.names())


def test_each_template_lists_the_models_the_analyzer_finds_in_its_workflow():
    flux2 = next(t for c in catalog.catalog() for t in c.templates if t.name == "image_flux2")
    expected = analyze.required_models(parse.read(templates.path("image_flux2")))
    assert [(m.directory, m.name, m.url) for m in flux2.models] == [
        (m.directory, m.name, m.url) for m in expected
    ]
    assert {m.directory for m in flux2.models} == {
        "diffusion_models",
        "loras",
        "text_encoders",
        "vae",
    }
    assert flux2.size > 10**9


def test_api_only_templates_need_no_model_files():
    api = [t for c in catalog.catalog() for t in c.templates if t.name.startswith("api_")]
    assert api
    assert all(t.models == () for t in api)


def test_pictures_are_none_without_a_media_bundle_and_never_audio():
    installed = any(importlib.util.find_spec(name) for name in catalog.MEDIA_PACKAGES)
    pictures = {t.picture for c in catalog.catalog() for t in c.templates}
    assert installed or pictures == {None}
    audio = {t.name for c in catalog.catalog() for t in c.templates if t.media_type == "audio"}
    assert audio and not audio & set(catalog.pictures())


def test_load_template_returns_the_workflow_json():
    workflow = templates.load_template("image_flux2")
    assert {"nodes", "links", "definitions"} <= set(workflow)


@pytest.mark.parametrize("name", ["no_such_template", "../comfyui_manager/model-list", "index"])
def test_only_templates_the_index_lists_can_be_loaded(name):
    with pytest.raises(JobError) as error:
        templates.load_template(name)
    assert error.value.category == "not_found"
