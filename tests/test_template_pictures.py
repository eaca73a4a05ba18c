"""Template pictures: the gallery's thumbnails, the view that serves them with long-lived
cache headers, and the picture heading a template's create form and its project's page."""

import struct

import pytest

from comfyhub.library.manager_data import package_dir
from comfyhub.projects.models import Project
from comfyhub.workflows import catalog, templates
from tests.projectpages import make

pytestmark = pytest.mark.django_db

FOR_GOOD = "public, max-age=31536000, immutable"


@pytest.fixture(autouse=True)
def folders(pages_dir):
    return pages_dir


def pictured() -> catalog.Template:
    found = [t for t in catalog.by_name().values() if t.picture]
    assert found, "no template picture: pip install comfyui-workflow-templates-media-image"
    return found[0]


def unpictured() -> catalog.Template:
    return next(t for t in catalog.by_name().values() if t.picture is None)


def card_of(html: str, name: str) -> str:
    """The gallery card holding the create form for template `name`."""
    start = html.rindex(
        '<li class="card template">', 0, html.index(f'name="template" value="{name}"')
    )
    return html[start : html.index("</li>", start)]


def test_a_card_shows_its_template_picture_lazy_loaded_with_its_size(client):
    template = pictured()
    html = client.get("/projects/new/", {"q": template.name}).content.decode()
    card, picture = card_of(html, template.name), template.picture
    assert f'src="/projects/templates/{template.name}/picture/?v={picture.version}"' in card
    assert 'loading="lazy"' in card
    assert f'width="{picture.width}" height="{picture.height}"' in card


def test_a_template_without_a_picture_gets_a_placeholder_and_no_request(client):
    template = unpictured()
    html = client.get("/projects/new/", {"q": template.name}).content.decode()
    card = card_of(html, template.name)
    assert 'class="picture none"' in card and "<img" not in card and "/picture/" not in card


def test_the_picture_is_served_cached_for_good_with_an_etag(client):
    picture = pictured().picture
    response = client.get(picture.url)
    assert response.status_code == 200 and response["Content-Type"] == picture.content_type
    assert b"".join(response.streaming_content) == picture.path.read_bytes()
    assert response["Cache-Control"] == FOR_GOOD
    assert response["ETag"] == f'"{picture.version}"'


def test_a_url_without_the_current_version_is_revalidated_by_etag(client):
    template = pictured()
    for query in ("", "?v=stale"):
        response = client.get(f"/projects/templates/{template.name}/picture/{query}")
        assert response.status_code == 200 and response["Cache-Control"] == "public, no-cache"


def test_a_matching_etag_gets_304_without_the_file(client):
    picture = pictured().picture
    response = client.get(picture.url, headers={"If-None-Match": f'"{picture.version}"'})
    assert response.status_code == 304 and response.content == b""
    changed = client.get(picture.url, headers={"If-None-Match": '"another"'})
    assert changed.status_code == 200


def test_only_pictures_the_media_bundles_hold_for_listed_templates_are_served(client):
    audio = next(
        e["name"]
        for g in templates.index()
        for e in g["templates"]
        if e.get("mediaSubtype") == "mp3"
    )
    for name in ("no_such_template", "..", "%2e%2e", "index", unpictured().name, audio):
        response = client.get(f"/projects/templates/{name}/picture/")
        assert response.status_code == 404, name
    assert client.get("/projects/templates/../../settings.py/picture/").status_code == 404


def test_a_picture_removed_while_the_server_runs_is_404_and_the_bundles_are_read_again(
    client, tmp_path
):
    template = pictured()
    gone = tmp_path / f"{template.name}-1.webp"
    gone.write_bytes(webp_vp8x(8, 8))
    try:
        catalog.pictures()[template.name] = catalog.picture(template.name, gone, "image/webp")
        gone.unlink()  # the bundle was upgraded: the cached path no longer exists
        assert client.get(f"/projects/templates/{template.name}/picture/").status_code == 404
        assert client.get(template.picture.url).status_code == 200
    finally:
        catalog.pictures.cache_clear()


def test_the_picture_view_refuses_post(client):
    assert client.post(pictured().picture.url).status_code == 405


def test_every_picture_is_an_image_file_inside_a_media_bundle():
    bundles = [package_dir(name) for name in catalog.MEDIA_PACKAGES if package_dir(name)]
    for picture in catalog.pictures().values():
        assert any(picture.path.is_relative_to(bundle) for bundle in bundles)
        assert picture.content_type.startswith("image/") and picture.path.is_file()


def webp_vp8x(width: int, height: int) -> bytes:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + size + b"\0\0"


def test_the_size_is_read_from_webp_and_png_headers_and_unknown_ones_say_none():
    png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + struct.pack(">II", 640, 480) + b"\0" * 8
    assert catalog.dimensions(webp_vp8x(350, 357)) == (350, 357)
    assert catalog.dimensions(png) == (640, 480)
    assert catalog.dimensions(b"GIF89a" + b"\0" * 26) is None


def test_a_refused_create_shows_the_template_picture_heading_its_form(client):
    template = pictured()
    response = client.post("/projects/new/", {"template": template.name, "name": "x" * 101})
    html = response.content.decode()
    assert response.status_code == 400 and '<section class="template-head"' in html
    head = html[html.index('<section class="template-head"') :]
    assert head.index(template.picture.url) < head.index(f'value="{template.name}"')
    assert not Project.objects.exists()


def test_a_project_made_from_a_template_shows_its_picture_and_another_does_not(client):
    template = pictured()
    made = make("From a template")
    made.touch(spec={**made.spec, "template": template.name})
    html = client.get(f"/projects/{made.slug}/").content.decode()
    assert template.picture.url in html and 'loading="eager"' in html
    plain = make("Imported").slug
    assert "/picture/" not in client.get(f"/projects/{plain}/").content.decode()
