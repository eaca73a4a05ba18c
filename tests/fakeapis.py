"""Loopback fakes of the CivitAI and Hugging Face APIs, answering with the real response
shapes (trimmed to the fields a downloader reads)."""

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from tests.fileserver import FileServer, LoopbackServer

LFS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")
LFS_SPEC = "version https://git-lfs.github.com/spec/v1"


def git_oid(blob: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(blob) + blob, usedforsecurity=False).hexdigest()


@dataclass
class CivitaiVersion:
    model_id: int
    version_id: int
    name: str
    data_url: str
    sha256: str
    size: int
    filename: str
    base_model: str


class FakeCivitai(LoopbackServer):
    """/api/v1/model-versions/<id>, /api/v1/model-versions/by-hash/<sha256>,
    /api/v1/models/<id>, /api/v1/models?query=&limit=[&cursor=] (every word of the query
    in the model's name; pages as the real full-text search gives them: `metadata` holds
    `nextCursor` and `nextPage`, the same search from that cursor, while more remain), and
    /api/download/models/<id>, which redirects to the file's `data_url` (put it on a
    FileServer: another port, like the real CDN's other host).

    With `token`, only the download endpoint wants it, as `Authorization: Bearer <token>`
    or `?token=<token>` (the real site takes either). With `outage` set to a status, every
    request gets it (a site that is down)."""

    def __init__(self, host: str = "127.0.0.1", token: str | None = None):
        super().__init__(host)
        self.token = token
        self.outage: int | None = None
        self.models: dict[int, dict] = {}
        self.versions: dict[int, CivitaiVersion] = {}

    def add_version(
        self,
        model_id: int,
        version_id: int,
        name: str,
        data_url: str,
        sha256_hex: str,
        size_bytes: int,
        filename: str,
        *,
        model_name: str | None = None,
        model_type: str = "Checkpoint",
        base_model: str = "SDXL 1.0",
    ) -> dict:
        """Register a version (the latest added is the model's newest); returns its JSON."""
        model = self.models.setdefault(
            model_id, {"name": model_name or f"Model {model_id}", "type": model_type, "ids": []}
        )
        model["ids"].append(version_id)
        self.versions[version_id] = CivitaiVersion(
            model_id, version_id, name, data_url, sha256_hex, size_bytes, filename, base_model
        )
        return self.version_json(self.versions[version_id])

    def download_url(self, version_id: int) -> str:
        return self.url(f"/api/download/models/{version_id}")

    def version_json(self, version: CivitaiVersion) -> dict:
        model = self.models[version.model_id]
        url = self.download_url(version.version_id)
        sha = version.sha256.upper()
        file = {
            "id": version.version_id,
            "name": version.filename,
            "sizeKB": version.size / 1024,
            "type": "Model",
            "primary": True,
            "hashes": {"SHA256": sha, "AutoV2": sha[:10]},
            "downloadUrl": url,
            "metadata": {
                "format": "SafeTensor" if version.filename.endswith(".safetensors") else "Other",
                "fp": "fp16",
                "size": "pruned",
            },
        }
        return {
            "id": version.version_id,
            "modelId": version.model_id,
            "name": version.name,
            "baseModel": version.base_model,
            "downloadUrl": url,
            "files": [file],
            "model": {"name": model["name"], "type": model["type"]},
        }

    def model_json(self, model_id: int) -> dict:
        model = self.models[model_id]
        newest_first = [self.version_json(self.versions[vid]) for vid in reversed(model["ids"])]
        return {
            "id": model_id,
            "name": model["name"],
            "type": model["type"],
            "modelVersions": newest_first,
        }

    def handle(self, h, record: dict) -> None:
        if self.outage:
            return self.reply_json(h, record, self.outage, {"error": "Service unavailable"})
        if match := re.fullmatch(r"/api/download/models/(\d+)", record["path"]):
            return self.download(h, record, int(match[1]))
        self.reply_json(h, record, *self.api(record["path"], parse_qs(record["query"])))

    def search(self, query: dict) -> dict:
        words = query.get("query", [""])[0].lower().split()
        limit = int(query.get("limit", ["100"])[0])
        found = [
            model_id
            for model_id, model in self.models.items()
            if all(word in model["name"].lower() for word in words)
        ]
        cursor = query.get("cursor", [""])[0]
        start = found.index(int(cursor)) if cursor.isdigit() and int(cursor) in found else 0
        page = found[start : start + limit]
        metadata = {}
        if start + limit < len(found):
            cursor = str(found[start + limit])
            params = {key: values[0] for key, values in query.items()}
            metadata = {
                "nextCursor": cursor,
                "nextPage": self.url(f"/api/v1/models?{urlencode({**params, 'cursor': cursor})}"),
            }
        return {"items": [self.model_json(model_id) for model_id in page], "metadata": metadata}

    def api(self, path: str, query: dict | None = None) -> tuple[int, dict]:
        if path == "/api/v1/models":
            return 200, self.search(query or {})
        if match := re.fullmatch(r"/api/v1/model-versions/by-hash/(\w+)", path):
            found = [v for v in self.versions.values() if v.sha256.lower() == match[1].lower()]
            return (200, self.version_json(found[0])) if found else (404, {"error": "Not found"})
        if match := re.fullmatch(r"/api/v1/model-versions/(\d+)", path):
            version = self.versions.get(int(match[1]))
            if version:
                return 200, self.version_json(version)
            return 404, {"error": f"No model version with id {match[1]}"}
        if match := re.fullmatch(r"/api/v1/models/(\d+)", path):
            if int(match[1]) in self.models:
                return 200, self.model_json(int(match[1]))
            return 404, {"error": f"No model with id {match[1]}"}
        return 404, {"error": "Not found"}

    def download(self, h, record: dict, version_id: int) -> None:
        offered = {h.headers.get("Authorization"), *parse_qs(record["query"]).get("token", [])}
        if self.token and not {f"Bearer {self.token}", self.token} & offered:
            message = "The creator of this asset requires you to be logged in to download it"
            return self.reply_json(h, record, 401, {"error": "Unauthorized", "message": message})
        version = self.versions.get(version_id)
        if version is None:
            return self.reply_json(
                h, record, 404, {"error": f"No model version with id {version_id}"}
            )
        self.reply(h, record, 302, b"", {"Location": version.data_url})


class FakeHuggingFace(FileServer):
    """Files at /<org>/<repo>/resolve/<rev>/<path> (a FileServer, so Range and scripts
    work), HTML at .../blob/..., and the JSON of /api/models?search=&limit=&sort=downloads
    (pages like the real hub's: a `Link: <same search&cursor=…>; rel="next"` header while
    more remain), /api/models/<repo> (also .../revision/<rev>) and
    /api/models/<repo>/tree/<rev>[/<folder>][?recursive=1].

    With `token`, resolve routes want `Authorization: Bearer <token>`; the API does not.
    With `outage` set to a status, every request gets it (a site that is down). With
    `search_delay` (seconds), each search answers that late (a slow site)."""

    def __init__(self, host: str = "127.0.0.1", token: str | None = None):
        super().__init__(host)
        self.token = token
        self.outage: int | None = None
        self.search_delay = 0.0
        self.repos: dict[str, dict] = {}
        self.trees: dict[tuple[str, str], dict[str, dict]] = {}

    def add_repo(self, repo: str, *, tags=(), likes: int = 0, downloads: int = 0) -> None:
        self.repos[repo] = {"tags": list(tags), "likes": likes, "downloads": downloads}

    def add_file(
        self, repo: str, path: str, data: bytes, rev: str = "main", *, lfs=None, **options
    ) -> str:
        """Register a file; `options` go to FileServer.add (script, rate, etag, ...).
        Like the real hub, the ETag is the LFS sha256 for LFS files, else the git blob id."""
        if repo not in self.repos:
            self.add_repo(repo)
        lfs = path.endswith(LFS_SUFFIXES) if lfs is None else lfs
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        )
        entry = {"type": "file", "oid": git_oid(data), "size": len(data), "path": path}
        if lfs:
            entry["oid"] = git_oid(pointer.encode())
            entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
        self.trees.setdefault((repo, rev), {})[path] = entry
        options.setdefault("etag", f'"{sha256 if lfs else entry["oid"]}"')
        auth = f"Bearer {self.token}" if self.token else None
        return self.add(f"/{repo}/resolve/{rev}/{path}", data, auth=auth, **options)

    def commit(self, repo: str, rev: str) -> str:
        oids = sorted(e["path"] + e["oid"] for e in self.trees[repo, rev].values())
        return hashlib.sha1("".join([repo, rev, *oids]).encode(), usedforsecurity=False).hexdigest()

    def handle(self, h, record: dict) -> None:
        path, query = record["path"], parse_qs(record["query"])
        if self.outage:
            return self.reply_json(h, record, self.outage, {"error": "Service unavailable"})
        if path == "/api/models":
            self._stopped.wait(self.search_delay)  # stop() cuts the delay short
            found, more = self.search(query)
            link = {"Link": f'<{self.url(f"/api/models?{more}")}>; rel="next"'} if more else {}
            return self.reply_json(h, record, 200, found, link)
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path):
            recursive = query.get("recursive", [""])[0] in {"1", "true", "True"}
            return self.reply_json(h, record, *self.tree(*match.groups(), recursive))
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.reply_json(h, record, *self.info(match[1], match[2] or "main"))
        if match := re.fullmatch(r"/([^/]+/[^/]+)/blob/([^/]+)/(.+)", path):
            return self.blob_page(h, record, *match.groups())
        super().handle(h, record)

    def search(self, query: dict) -> tuple[list[dict], str]:
        """One page of repos whose id holds the search, most downloaded first when asked,
        and the query string of the next page ("" on the last)."""
        needle = query.get("search", [""])[0].lower()
        limit = int(query.get("limit", ["1000"])[0])
        found = [repo for repo in self.repos if needle in repo.lower()]
        if query.get("sort") == ["downloads"]:
            found.sort(key=lambda repo: self.repos[repo]["downloads"], reverse=True)
        cursor = query.get("cursor", [""])[0]
        start = int(base64.urlsafe_b64decode(cursor)) if cursor else 0
        more = ""
        if start + limit < len(found):
            params = {key: values[0] for key, values in query.items()}
            cursor = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            more = urlencode({**params, "cursor": cursor})
        return self.repo_json(found[start : start + limit]), more

    def repo_json(self, found: list[str]) -> list[dict]:
        return [
            {
                "_id": hashlib.md5(repo.encode(), usedforsecurity=False).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "likes": self.repos[repo]["likes"],
                "downloads": self.repos[repo]["downloads"],
                "tags": self.repos[repo]["tags"],
                "private": False,
            }
            for repo in found
        ]

    def info(self, repo: str, rev: str) -> tuple[int, dict]:
        if (repo, rev) not in self.trees:
            return 404, {"error": "Repository not found"}
        return 200, {
            "id": repo,
            "modelId": repo,
            "sha": self.commit(repo, rev),
            "private": False,
            "tags": self.repos[repo]["tags"],
            "likes": self.repos[repo]["likes"],
            "downloads": self.repos[repo]["downloads"],
            "siblings": [{"rfilename": path} for path in sorted(self.trees[repo, rev])],
        }

    def tree(self, repo: str, rev: str, folder: str, recursive: bool) -> tuple[int, list | dict]:
        if (repo, rev) not in self.trees:
            return 404, {"error": "Repository not found"}
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        folders, files = {}, []
        for path, entry in sorted(self.trees[repo, rev].items()):
            if not path.startswith(prefix):
                continue
            rest = path.removeprefix(prefix)
            if "/" in rest and not recursive:
                name = prefix + rest.split("/")[0]
                oid = git_oid(name.encode())
                folders[name] = {"type": "directory", "oid": oid, "size": 0, "path": name}
            else:
                files.append(entry)
        return 200, [*folders.values(), *files]

    def blob_page(self, h, record: dict, repo: str, rev: str, path: str) -> None:
        status = 200 if f"/{repo}/resolve/{rev}/{path}" in self.files else 404
        page = (
            f'<!doctype html>\n<html class=""><head><meta charset="utf-8" />'
            f"<title>{path} · {repo} at {rev}</title></head>\n<body><main>"
            f'<a href="/{repo}/resolve/{rev}/{path}">download</a></main></body></html>\n'
        )
        self.reply(h, record, status, page.encode(), {"Content-Type": "text/html; charset=utf-8"})


class FakeManagerData(LoopbackServer):
    """ComfyUI-Manager's data files as raw.githubusercontent.com serves them: a strong
    ETag, and 304 Not Modified for a matching If-None-Match."""

    def __init__(self, host: str = "127.0.0.1"):
        super().__init__(host)
        self.files: dict[str, bytes] = {}

    def put(self, name: str, payload) -> str:
        self.files["/" + name] = json.dumps(payload).encode()
        return self.url(name)

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha1(self.files[path], usedforsecurity=False).hexdigest() + '"'

    def handle(self, h, record: dict) -> None:
        if record["path"] not in self.files:
            return self.reply(h, record, 404, b"404: Not Found")
        etag = self.etag(record["path"])
        if h.headers.get("If-None-Match") == etag:
            return self.reply(h, record, 304, b"", {"ETag": etag})
        head = {"ETag": etag, "Content-Type": "text/plain; charset=utf-8"}
        self.reply(h, record, 200, self.files[record["path"]], head)


class FakeRegistry(FileServer):
    """The Comfy Registry: /nodes/<id>/install[?version=V] answers the NodeVersion of that
    version (the latest published without `version`), 404 for an unknown id or version;
    the zips are files of this server (a FileServer, so scripts such as drops work) at
    each version's downloadUrl. With `outage` set to a status, the API answers it. With
    `latest_for_unknown`, an unknown version of a known id gets the latest instead of a
    404, as the real registry has been seen to do."""

    def __init__(self, host: str = "127.0.0.1"):
        super().__init__(host)
        self.outage: int | None = None
        self.latest_for_unknown = False
        self.nodes: dict[str, dict[str, dict]] = {}

    def publish(self, cnr_id: str, version: str, archive: bytes, **options) -> dict:
        """Publish `archive` (zip bytes) as `cnr_id`@`version`; `options` go to
        FileServer.add (script, ...). Returns the version's JSON."""
        url = self.add(f"/storage/{cnr_id}/{version}/node.zip", archive, **options)
        number = sum(len(versions) for versions in self.nodes.values()) + 1
        self.nodes.setdefault(cnr_id, {})[version] = {
            "id": f"00000000-0000-4000-8000-{number:012d}",
            "node_id": cnr_id,
            "version": version,
            "downloadUrl": url,
            "changelog": "",
            "dependencies": [],
            "deprecated": False,
            "status": "NodeVersionStatusActive",
            "status_reason": "",
            "createdAt": f"2025-01-{number % 28 + 1:02d}T12:00:00.000000Z",
            "supported_os": None,
            "supported_accelerators": None,
            "supported_comfyui_version": "",
            "supported_comfyui_frontend_version": "",
            "comfy_node_extract_status": "success",
        }
        return self.nodes[cnr_id][version]

    def handle(self, h, record: dict) -> None:
        match = re.fullmatch(r"/nodes/([^/]+)/install", record["path"])
        if not match:
            return super().handle(h, record)
        if self.outage:
            return self.reply_json(h, record, self.outage, {"message": "Service unavailable"})
        versions = self.nodes.get(match[1], {})
        wanted = parse_qs(record["query"]).get("version", [None])[0]
        latest = next(reversed(versions.values()), None)
        found = versions.get(wanted) if wanted else latest
        found = found or (latest if self.latest_for_unknown else None)
        if found is None:
            return self.reply_json(h, record, 404, {"message": "Node version not found"})
        self.reply_json(h, record, 200, found)
