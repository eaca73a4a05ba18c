"""Tiny local git repos standing in for ComfyUI and a custom node pack."""

import subprocess
from pathlib import Path

MAIN_PY = """\
import argparse, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--cpu", action="store_true")
args, _ = parser.parse_known_args()
nodes = sorted(os.listdir("custom_nodes")) if os.path.isdir("custom_nodes") else []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/system_stats":
            body = {"system": {"comfyui_version": "fake", "argv": sys.argv}, "devices": []}
        elif self.path == "/object_info":
            body = {"custom_nodes": nodes}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


# Not flushed: it reaches the log while ComfyUI runs only if its output is unbuffered.
print(os.environ.get("FAKE_COMFY_SAY", "Starting server"))
gate = os.environ.get("FAKE_COMFY_GATE")  # a slow start: no answer until this file exists
while gate and not os.path.exists(gate):
    time.sleep(0.05)
print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()
"""

INSTALL_PY = """\
import os, pathlib, time

if os.environ.get("FAKE_NODE_TRACE"):
    with open(os.environ["FAKE_NODE_TRACE"], "a") as fh:
        fh.write("install.py\\n")
gate = os.environ.get("FAKE_NODE_GATE")
print("installing the fake nodes")  # not flushed: it shows only if output is unbuffered
while gate and not pathlib.Path(gate).exists():
    time.sleep(0.05)
"""


def git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    out = subprocess.run(
        ["git", *env_args, *args], cwd=repo, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def commit_files(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_repo(path: Path, first: dict[str, str], second: dict[str, str]) -> tuple[Path, list[str]]:
    """A repo with two commits; returns (path, [first_commit, second_commit])."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return path, [commit_files(path, first, "first"), commit_files(path, second, "second")]


def comfyui_repo(root: Path) -> tuple[Path, list[str]]:
    return make_repo(
        root / "ComfyUI",
        {"main.py": MAIN_PY, "requirements.txt": ""},
        {"README.md": "fake ComfyUI\n"},
    )


def node_repo(root: Path, name: str = "ComfyUI-Fake-Nodes") -> tuple[Path, list[str]]:
    first = {
        "__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
        "install.py": INSTALL_PY,
        "requirements.txt": "",
    }
    return make_repo(root / name, first, {"VERSION": "2\n"})
