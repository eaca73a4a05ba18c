"""The scripted file server and the fake CivitAI / Hugging Face APIs behave as documented,
seen from a real HTTP client."""

import hashlib
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakeapis import FakeCivitai, FakeHuggingFace
from tests.fileserver import FileServer

DATA = bytes(range(256)) * 4
SHA = hashlib.sha256(DATA).hexdigest()
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
BROKEN = (httpx.RemoteProtocolError, httpx.ReadError)


@pytest.fixture
def server():
    with FileServer() as server:
        yield server


@pytest.fixture
def other():
    with FileServer() as other:
        yield other


@pytest.fixture
def civitai(other):
    with FakeCivitai(token="abc") as civitai:
        url = other.add("/cdn/model.safetensors", DATA)
        civitai.add_version(10, 100, "v1.0", url, SHA, len(DATA), "model.safetensors")
        civitai.add_version(10, 101, "v2.0", url, SHA.upper(), len(DATA), "model.safetensors")
        yield civitai


@pytest.fixture
def hf():
    with FakeHuggingFace() as hf:
        hf.add_repo("org/repo", tags=["diffusers"], likes=1, downloads=2)
        hf.add_file("org/repo", "unet/model.safetensors", DATA)
        hf.add_file("org/repo", "config.json", b"{}")
        yield hf


def test_it_serves_the_whole_file(server):
    response = httpx.get(server.add("/f.bin", DATA))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == '"v1"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert server.requests[-1] | {"headers": {}} == {
        "path": "/f.bin",
        "query": "",
        "method": "GET",
        "headers": {},
        "status": 200,
        "sent": len(DATA),
    }


def test_head_answers_headers_only_and_leaves_the_script_alone(server):
    url = server.add("/f.bin", DATA, script=["status:503"])
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(DATA))
    assert server.requests[-1]["sent"] == 0
    assert httpx.get(url).status_code == 503


def test_it_serves_a_range_from_an_offset(server):
    response = httpx.get(server.add("/f.bin", DATA), headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 1000-1023/{len(DATA)}"
    assert response.content == DATA[1000:]


def test_it_serves_a_closed_range_and_a_suffix(server):
    url = server.add("/f.bin", DATA)
    assert httpx.get(url, headers={"Range": "bytes=2-4"}).content == DATA[2:5]
    suffix = httpx.get(url, headers={"Range": "bytes=-3"})
    assert suffix.headers["content-range"] == "bytes 1021-1023/1024"
    assert suffix.content == DATA[-3:]


def test_a_range_starting_past_the_end_is_416(server):
    response = httpx.get(server.add("/f.bin", DATA), headers={"Range": "bytes=1024-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */1024"
    assert response.content == b""


def test_a_416_can_carry_an_html_page_as_cdns_send(server):
    url = server.add("/f.bin", DATA, body_416=b"<html>Range Not Satisfiable</html>")
    response = httpx.get(url, headers={"Range": "bytes=1024-"})
    assert response.status_code == 416
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == b"<html>Range Not Satisfiable</html>"


def test_a_stale_if_range_gets_the_whole_file(server):
    url = server.add("/f.bin", DATA)
    stale = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": '"v0"'})
    assert (stale.status_code, stale.content) == (200, DATA)
    fresh = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": '"v1"'})
    assert (fresh.status_code, fresh.content) == (206, DATA[10:])


def test_if_range_compares_last_modified_dates(server):
    url = server.add("/f.bin", DATA, etag=None, last_modified=LAST_MODIFIED)
    same = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": LAST_MODIFIED})
    assert same.status_code == 206
    older = "Tue, 20 Oct 2015 07:28:00 GMT"
    assert httpx.get(url, headers={"Range": "bytes=10-", "If-Range": older}).status_code == 200
    assert "etag" not in same.headers


def test_replace_serves_new_content_under_a_new_etag(server):
    url = server.add("/f.bin", DATA)
    server.replace("/f.bin", b"new")
    response = httpx.get(url, headers={"Range": "bytes=1-", "If-Range": '"v1"'})
    assert (response.status_code, response.content) == (200, b"new")
    assert response.headers["etag"] == '"v2"'


def test_drop_closes_the_connection_after_n_bytes(server):
    url = server.add("/f.bin", DATA, script=["drop:100"])
    with pytest.raises(BROKEN):
        httpx.get(url)
    assert server.requests[-1]["status"] == 200
    assert server.requests[-1]["sent"] == 100
    assert httpx.get(url).content == DATA


def test_drop_declares_the_full_range_length(server):
    url = server.add("/f.bin", DATA, script=["drop:10"])
    with httpx.stream("GET", url, headers={"Range": "bytes=24-"}) as response:
        assert response.status_code == 206
        assert response.headers["content-length"] == "1000"
        with pytest.raises(BROKEN):
            response.read()
    assert server.requests[-1]["sent"] == 10


def test_short_sends_fewer_bytes_than_content_length(server):
    url = server.add("/f.bin", DATA, script=["short:0"])
    with pytest.raises(BROKEN):
        httpx.get(url)
    assert server.requests[-1]["sent"] == 0


def test_stall_makes_the_client_time_out(server):
    url = server.add("/f.bin", DATA, script=["stall:50"])
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(5, read=0.2))
    assert server.requests[-1]["sent"] == 50
    server.release_stalls()
    assert httpx.get(url).content == DATA


def test_stop_releases_a_stalled_handler(server):
    url = server.add("/f.bin", DATA, script=["stall:50"])
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(5, read=0.2))
    server.stop()
    assert server.connections == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_status_answers_with_retry_after_then_recovers(server):
    url = server.add("/f.bin", DATA, script=["status:503:7", f"status:429:{LAST_MODIFIED}"])
    with httpx.Client() as client:
        first, second, third = (client.get(url) for _ in range(3))
    assert (first.status_code, first.headers["retry-after"]) == (503, "7")
    assert (second.status_code, second.headers["retry-after"]) == (429, LAST_MODIFIED)
    assert (third.status_code, third.content) == (200, DATA)
    assert "retry-after" not in third.headers


def test_ignore_range_sends_the_whole_file(server):
    url = server.add("/f.bin", DATA, script=["ignore_range"])
    response = httpx.get(url, headers={"Range": "bytes=10-"})
    assert (response.status_code, response.content) == (200, DATA)
    assert "content-range" not in response.headers


def test_flip_corrupts_one_byte_at_an_absolute_offset(server):
    url = server.add("/f.bin", DATA, script=["flip:500", "flip:500", "flip:5"])
    whole = httpx.get(url).content
    assert whole[500] == DATA[500] ^ 0xFF
    assert whole[:500] + whole[501:] == DATA[:500] + DATA[501:]
    assert httpx.get(url, headers={"Range": "bytes=400-"}).content[100] == DATA[500] ^ 0xFF
    assert httpx.get(url, headers={"Range": "bytes=400-"}).content == DATA[400:]


def test_redirect_points_at_another_server(server, other):
    target = other.add("/real.bin", DATA)
    url = server.add("/f.bin", b"", script=[f"redirect:{target}"])
    response = httpx.get(url, follow_redirects=True)
    assert response.content == DATA
    assert response.history[0].status_code == 302
    assert response.history[0].headers["location"] == target
    assert other.bytes_sent("/real.bin") == len(DATA)


def test_rate_throttles_without_damaging_the_body(server):
    response = httpx.get(server.add("/f.bin", DATA, rate=50_000))
    assert response.content == DATA


def test_auth_refuses_other_tokens_without_using_the_script(server):
    url = server.add("/f.bin", DATA, auth="Bearer X", script=["status:500"])
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer Y"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer X"}).status_code == 500
    assert httpx.get(url, headers={"Authorization": "Bearer X"}).content == DATA


def test_bytes_sent_adds_up_bodies_per_path(server):
    url = server.add("/f.bin", DATA, script=["drop:100"])
    server.add("/g.bin", b"abc")
    with pytest.raises(BROKEN):
        httpx.get(url)
    httpx.get(url, headers={"Range": "bytes=100-"})
    httpx.get(server.url("/g.bin"))
    assert server.bytes_sent("/f.bin") == len(DATA)
    assert server.bytes_sent() == len(DATA) + 3


def test_unknown_paths_and_bad_script_entries(server):
    assert httpx.get(server.url("/missing")).status_code == 404
    for entry in ["drop", "stall:x", "status:", "redirect:", "teleport:3"]:
        with pytest.raises(ValueError, match="bad script entry"):
            server.add("/f.bin", DATA, script=[entry])


def test_civitai_version_has_the_real_shape(civitai):
    version = httpx.get(civitai.url("/api/v1/model-versions/100")).json()
    assert (version["id"], version["modelId"], version["baseModel"]) == (100, 10, "SDXL 1.0")
    assert version["downloadUrl"] == civitai.url("/api/download/models/100")
    [file] = version["files"]
    assert file["hashes"] == {"SHA256": SHA.upper(), "AutoV2": SHA.upper()[:10]}
    assert (file["name"], file["sizeKB"], file["primary"]) == ("model.safetensors", 1.0, True)
    assert file["metadata"]["format"] == "SafeTensor"
    assert version["model"] == {"name": "Model 10", "type": "Checkpoint"}


def test_civitai_model_lists_versions_newest_first(civitai):
    model = httpx.get(civitai.url("/api/v1/models/10")).json()
    assert (model["id"], model["type"]) == (10, "Checkpoint")
    assert [v["id"] for v in model["modelVersions"]] == [101, 100]
    assert model["modelVersions"][0]["files"][0]["downloadUrl"].endswith("/models/101")


def test_civitai_finds_versions_by_hash_in_any_case(civitai):
    found = httpx.get(civitai.url(f"/api/v1/model-versions/by-hash/{SHA}"))
    assert found.json()["id"] in {100, 101}
    assert httpx.get(civitai.url(f"/api/v1/model-versions/by-hash/{SHA.upper()}")).is_success
    assert httpx.get(civitai.url("/api/v1/model-versions/by-hash/00ff")).status_code == 404


def test_civitai_unknown_ids_are_404_json(civitai):
    model = httpx.get(civitai.url("/api/v1/models/9"))
    assert (model.status_code, model.json()) == (404, {"error": "No model with id 9"})
    version = httpx.get(civitai.url("/api/v1/model-versions/9"))
    assert (version.status_code, version.json()) == (404, {"error": "No model version with id 9"})


def test_civitai_download_redirects_to_another_host(civitai, other):
    auth = {"Authorization": "Bearer abc"}
    response = httpx.get(civitai.download_url(100), headers=auth, follow_redirects=True)
    assert response.content == DATA
    assert response.history[0].status_code == 302
    assert (
        urlsplit(str(response.url)).port == urlsplit(other.base).port != urlsplit(civitai.base).port
    )
    assert "authorization" not in other.requests[-1]["headers"]


def test_civitai_download_wants_the_token(civitai):
    refused = httpx.get(civitai.download_url(100))
    assert (refused.status_code, refused.json()["error"]) == (401, "Unauthorized")
    wrong = httpx.get(civitai.download_url(100), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(civitai.download_url(100) + "?token=abc").status_code == 302
    assert httpx.get(civitai.url("/api/v1/model-versions/100")).status_code == 200
    assert civitai.requests[0]["headers"]["host"] == urlsplit(civitai.base).netloc


def test_hf_resolve_serves_ranges_with_the_lfs_etag(hf):
    url = hf.url("/org/repo/resolve/main/unet/model.safetensors")
    response = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert (response.status_code, response.content) == (206, DATA[1000:])
    assert response.headers["etag"] == f'"{SHA}"'
    assert httpx.get(hf.url("/org/repo/resolve/dev/config.json")).status_code == 404


def test_hf_blob_pages_are_html(hf):
    response = httpx.get(hf.url("/org/repo/blob/main/unet/model.safetensors"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!doctype html>")
    assert httpx.get(hf.url("/org/repo/blob/main/nope.bin")).status_code == 404


def test_hf_search_lists_matching_repos(hf):
    hf.add_repo("someone/else")
    found = httpx.get(hf.url("/api/models"), params={"search": "ORG/", "limit": 5}).json()
    assert [{k: v for k, v in m.items() if k != "_id"} for m in found] == [
        {
            "id": "org/repo",
            "modelId": "org/repo",
            "likes": 1,
            "downloads": 2,
            "tags": ["diffusers"],
            "private": False,
        }
    ]
    assert len(found[0]["_id"]) == 24


def test_hf_tree_lists_folders_and_lfs_files(hf):
    top = httpx.get(hf.url("/api/models/org/repo/tree/main")).json()
    assert [(e["type"], e["path"]) for e in top] == [("directory", "unet"), ("file", "config.json")]
    assert "lfs" not in top[1]
    [unet] = httpx.get(hf.url("/api/models/org/repo/tree/main/unet")).json()
    assert unet["lfs"] == {"oid": SHA, "size": len(DATA), "pointerSize": 129}
    assert (unet["size"], len(unet["oid"])) == (len(DATA), 40)
    everything = httpx.get(hf.url("/api/models/org/repo/tree/main?recursive=1")).json()
    assert [e["path"] for e in everything] == ["config.json", "unet/model.safetensors"]


def test_hf_model_info_lists_siblings_and_a_commit(hf):
    info = httpx.get(hf.url("/api/models/org/repo")).json()
    assert info["id"] == "org/repo"
    assert info["siblings"] == [
        {"rfilename": "config.json"},
        {"rfilename": "unet/model.safetensors"},
    ]
    assert len(info["sha"]) == 40
    assert httpx.get(hf.url("/api/models/org/missing")).status_code == 404


def test_hf_token_guards_files_but_not_the_api():
    with FakeHuggingFace(token="hf_secret") as hf:
        url = hf.add_file("org/private", "model.safetensors", DATA)
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer hf_secret"}).content == DATA
        assert httpx.get(hf.url("/api/models/org/private")).status_code == 200
