"""Tiny local git repos standing in for ComfyUI and a custom node pack.

The stand-in ComfyUI behaves like the real one where ComfyHub asks it: it reads
extra_model_paths.yaml, imports custom_nodes/* (printing ComfyUI's failure lines), and
serves /object_info, /models and /models/<folder>.
"""

import subprocess
from pathlib import Path

MAIN_PY = """\
import argparse, importlib.util, json, os, sys, time, traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--cpu", action="store_true")
args, _ = parser.parse_known_args()
HERE = os.path.dirname(os.path.abspath(__file__))

# As ComfyUI's folder_paths: every folder it knows, each first read from models/<folder>
# (and a legacy folder or two), filtered to model file extensions.
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
KNOWN = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
    "gligen", "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker",
    "classifiers", "model_patches", "audio_encoders", "geometry_estimation",
    "background_removal", "frame_interpolation", "optical_flow", "detection",
)
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}  # folder_paths.map_legacy
folders = {name: ([os.path.join(HERE, "models", name)], MODEL_EXTENSIONS) for name in KNOWN}
folders["configs"] = ([os.path.join(HERE, "models", "configs")], {".yaml"})
for old, new in {**LEGACY, "t2i_adapter": "controlnet"}.items():  # default second paths
    folders[new][0].append(os.path.join(HERE, "models", old))


def add_model_folder_path(name, path):
    name = LEGACY.get(name, name)  # folder_paths.map_legacy
    if name in folders:
        folders[name][0].append(path)
    else:
        folders[name] = ([path], set())


def load_extra_path_config(path):
    # The simple YAML ComfyHub writes: "section:", then indented "key": "value" lines
    # (double-quoted scalars, a newline in a value separating two paths).
    base = ""
    for line in open(path).read().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "\t")):  # a new section
            base = ""
            continue
        key, value = (scalar(part) for part in split_key(line.strip()))
        if key == "base_path":
            base = os.path.expanduser(value)
        elif key != "is_default":
            for folder in value.split("\\n"):  # as ComfyUI: one path per line of the value
                if folder.strip():
                    add_model_folder_path(key, os.path.join(base, folder.strip()))


def split_key(line):
    # "key": value, or key: value
    if line.startswith('"'):
        end = line.index('"', 1)  # folder names hold no quote (folders.DIRECTORY)
        return line[: end + 1], line[end + 1 :].lstrip().removeprefix(":")
    key, _, value = line.partition(":")
    return key, value


def scalar(text):
    text = text.strip()
    return json.loads(text) if text.startswith('"') else text


def get_filename_list(name):
    paths, extensions = folders[name]
    found = set()
    for root in paths:
        for here, dirs, files in os.walk(root, followlinks=True):
            for file in files:
                if extensions and os.path.splitext(file)[1].lower() not in extensions:
                    continue
                found.add(os.path.relpath(os.path.join(here, file), root))
    return sorted(found)


CORE = [
    "CheckpointLoaderSimple", "CheckpointLoader", "unCLIPCheckpointLoader",
    "ImageOnlyCheckpointLoader", "UNETLoader", "CLIPLoader", "DualCLIPLoader",
    "TripleCLIPLoader", "QuadrupleCLIPLoader", "VAELoader", "LoraLoader",
    "LoraLoaderModelOnly", "ControlNetLoader", "DiffControlNetLoader", "CLIPVisionLoader",
    "UpscaleModelLoader", "StyleModelLoader", "GLIGENLoader", "HypernetworkLoader",
    "PhotoMakerLoader", "ModelPatchLoader", "AudioEncoderLoader", "LatentUpscaleModelLoader",
    "LTXAVTextEncoderLoader", "LTXVAudioVAELoader", "ConditioningLoader",
    "LoadBackgroundRemovalModel", "LoadMoGeModel", "LoadDA3Model",
    "FrameInterpolationModelLoader", "OpticalFlowLoader", "SAM3DBody_Loader",
    "KSampler", "KSamplerAdvanced", "CLIPTextEncode", "CLIPSetLastLayer",
    "EmptyLatentImage", "EmptySD3LatentImage", "VAEDecode", "VAEEncode", "VAEDecodeTiled",
    "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask", "ImageScale",
    "ImageScaleBy", "LatentUpscale", "ControlNetApply", "ControlNetApplyAdvanced",
    "ConditioningCombine", "ConditioningSetArea", "FluxGuidance", "ModelSamplingSD3",
    "ModelSamplingFlux", "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler",
    "BasicGuider", "CFGGuider", "RandomNoise", "ImageUpscaleWithModel",
]
extra_core = os.environ.get("FAKE_COMFY_CORE_TYPES")  # a file: one more core type a line
if extra_core:
    CORE += open(extra_core).read().splitlines()
object_info = {t: {"name": t, "display_name": t, "python_module": "nodes"} for t in CORE}


def load_custom_nodes():
    base = os.path.join(HERE, "custom_nodes")
    times = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        if name == "__pycache__" or name.endswith(".disabled"):
            continue
        if not os.path.isfile(os.path.join(path, "__init__.py")):
            continue
        try:
            spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            for node_type in getattr(module, "NODE_CLASS_MAPPINGS", {}):
                module_name = "custom_nodes." + name
                object_info[node_type] = {"name": node_type, "python_module": module_name}
            times.append((path, True))
        except Exception as e:
            print(traceback.format_exc())
            print(f"Cannot import {path} module for custom nodes: {e}")
            times.append((path, False))
    if times:
        print()
        print("Import times for custom nodes:")
        for path, ok in times:
            print("{:6.1f} seconds{}: {}".format(0.0, "" if ok else " (IMPORT FAILED)", path))
        print()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.removeprefix("/api")
        if path == "/system_stats":
            body = {"system": {"comfyui_version": "fake", "argv": sys.argv}, "devices": []}
        elif path == "/object_info":
            body = object_info
        elif path == "/models":
            body = list(folders)
        elif path.startswith("/models/") and path[len("/models/"):] in folders:
            body = get_filename_list(path[len("/models/"):])
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
if os.path.isfile(os.path.join(HERE, "extra_model_paths.yaml")):
    load_extra_path_config(os.path.join(HERE, "extra_model_paths.yaml"))
load_custom_nodes()
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
