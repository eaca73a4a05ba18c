"""Tiny wheels written straight as zip files: stand-ins for torch & co, no network, no build."""

import base64
import hashlib
import zipfile
from pathlib import Path


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
