import pytest

from comfyhub.library.paths import (
    BadInput,
    check_sha256,
    check_size,
    check_url,
    host_of,
    models_path,
)


@pytest.mark.parametrize(
    ("dest", "reason"),
    [
        ("/etc/passwd", "relative"),
        ("~/x.bin", "relative"),
        ("checkpoints/../../x.bin", "'..'"),
        ("checkpoints/a\x00b", "NUL"),
        ("x.bin", "DIR/NAME"),
        ("checkpoints/", "DIR/NAME"),
        ("", "empty"),
    ],
)
def test_unsafe_destinations_are_refused_with_the_reason(tmp_path, dest, reason):
    with pytest.raises(BadInput, match=reason):
        models_path(dest, tmp_path)


def test_a_symlink_out_of_the_models_folder_is_refused(tmp_path):
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    (models / "loras").symlink_to(outside)
    with pytest.raises(BadInput, match="outside the models folder"):
        models_path("loras/x.safetensors", models)


def test_a_symlink_inside_the_models_folder_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "loras").symlink_to(tmp_path / "real")
    assert models_path("loras/x.bin", tmp_path) == tmp_path.resolve() / "real" / "x.bin"


def test_a_normal_destination_resolves_inside_the_folder(tmp_path):
    assert models_path("checkpoints/sd.safetensors", tmp_path).parent.name == "checkpoints"


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "file:///etc/passwd", "javascript:alert(1)", "http://"]
)
def test_only_http_and_https_urls_are_accepted(url):
    with pytest.raises(BadInput, match="Only http"):
        check_url(url)


def test_a_sha256_must_be_64_hex_characters():
    assert check_sha256("AB" * 32) == "ab" * 32
    with pytest.raises(BadInput, match="64 hexadecimal"):
        check_sha256("abc")


@pytest.mark.parametrize("url", ["http://h/a\r\nX: y", "http://h/a\tb", "https://h/\x7f"])
def test_a_url_with_a_control_character_is_refused(url):
    with pytest.raises(BadInput, match="line break or another control character"):
        check_url(url)


def test_a_name_leaves_room_for_its_part_json(tmp_path):
    assert models_path(f"vae/{'x' * 245}", tmp_path).name == "x" * 245
    with pytest.raises(BadInput, match="246 bytes long; at most 245 fit"):
        models_path(f"vae/{'x' * 246}", tmp_path)


def test_a_host_never_keeps_the_password_of_its_url():
    assert host_of("https://me:pw@Example.org:8443/x") == "example.org:8443"
    assert host_of("http://u:p@[::1]/x") == "[::1]"


@pytest.mark.parametrize("size", [-1, 10**15 + 1, 10**30, True])
def test_a_size_is_a_whole_number_of_bytes_within_reason(size):
    with pytest.raises(BadInput, match="whole number of bytes from 0 to"):
        check_size(size)
