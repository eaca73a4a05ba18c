"""Tiny wheels written straight as zip files: stand-ins for torch & co, no network, no build."""

import base64
import hashlib
import zipfile
from pathlib import Path

from tests.fileserver import LoopbackServer


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), module: str = ""
) -> Path:
    """A pure-Python wheel of package `name` whose module (`module`, else the package's
    own name) says its `__version__`."""
    stem = name.replace("-", "_")
    module = module or stem
    info = f"{stem}-{version}.dist-info"
    metadata = "Metadata-Version: 2.1\n" + f"Name: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [record_line(path, data) for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
    return path


def seed_wheels(folder: Path) -> None:
    """What `uv venv --seed` puts into a Python 3.11 venv: the real pip and setuptools that
    ship with this Python (ensurepip's own copies), and a stand-in `wheel`."""
    import ensurepip

    bundled = Path(ensurepip.__file__).parent / "_bundled"
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in bundled.glob("*.whl"):
        (folder / wheel.name).write_bytes(wheel.read_bytes())
    write_wheel(folder, "wheel", "0.45.0")


class DatedIndex(LoopbackServer):
    """A PEP 691 JSON simple index on loopback whose files carry their upload time (PEP
    700), as PyPI's do: what uv's --exclude-newer reads, and what a find-links folder or a
    file:// index cannot show."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.uploaded: dict[str, str] = {}  # wheel file name -> its upload time

    def add(self, name: str, version: str, uploaded: str) -> None:
        self.uploaded[write_wheel(self.folder, name, version).name] = uploaded

    def handle(self, h, record: dict) -> None:
        kind, _, name = record["path"].strip("/").partition("/")
        if kind == "files" and name in self.uploaded:
            return self.reply(h, record, 200, (self.folder / name).read_bytes())
        if kind == "simple" and name:
            json_type = {"Content-Type": "application/vnd.pypi.simple.v1+json"}
            return self.reply_json(h, record, 200, self.page(name), json_type)
        self.reply(h, record, 404, b"not found\n")

    def page(self, name: str) -> dict:
        module = name.replace("-", "_")
        files = [
            {
                "filename": wheel,
                "url": self.url(f"files/{wheel}"),
                "hashes": {
                    "sha256": hashlib.sha256((self.folder / wheel).read_bytes()).hexdigest()
                },
                "upload-time": uploaded,
            }
            for wheel, uploaded in self.uploaded.items()
            if wheel.startswith(f"{module}-")
        ]
        versions = sorted({file["filename"].split("-")[1] for file in files})
        return {"meta": {"api-version": "1.1"}, "name": name, "versions": versions, "files": files}


PIP_VARIABLES = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT")


def write_pip_conf(path: Path, monkeypatch, **values) -> None:
    """pip's configuration (and so uv's, envs.pip_config) is `values`, as a pip.conf; the
    PIP_* variables that would override it are unset."""
    lines = ["[global]", *(f"{key.replace('_', '-')} = {value}" for key, value in values.items())]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(path))
    for name in (*PIP_VARIABLES, "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


def offline_index(tmp_path: Path, monkeypatch) -> Path:
    """A folder of wheels (pip's seeds to start with) that pip and uv read instead of any
    index, with no configured constraint: a test's environments need no network."""
    folder = tmp_path / "wheels"
    seed_wheels(folder)
    conf = dict(no_index="true", find_links=folder, extra_index_url="", constraint="")
    write_pip_conf(tmp_path / "pip.conf", monkeypatch, **conf)
    monkeypatch.setenv("UV_OFFLINE", "1")
    return folder
