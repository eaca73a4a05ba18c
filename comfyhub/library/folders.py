"""The models folders: one list for the analyzer, the finder and extra_model_paths.yaml.

`COMFYUI` is every folder current ComfyUI's `folder_paths` knows (custom_nodes aside: it
holds code, not models); `LEGACY` the older folder names ComfyUI still reads into one of
them; `PACKS` folders that popular custom-node packs register for their models. A workflow
may name any other directory: `folders_for` adds it, so ComfyUI is pointed at every folder a
project's models are put in.
"""

import json
import re
from collections.abc import Iterable
from pathlib import Path

COMFYUI = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "geometry_estimation",
    "background_removal",
    "frame_interpolation",
    "optical_flow",
    "detection",
)
# Folder names ComfyUI reads into another folder (folder_paths.map_legacy, and controlnet's
# second default path): models saved there are found under the new name.
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
PACKS = ("ipadapter", "animatediff_models", "animatediff_motion_lora")
FOLDERS = COMFYUI + tuple(LEGACY) + PACKS
# Downloads that are not models (a registry pack's zip, a launcher's input image) land
# under this hidden folder of the models folder: the download engine (resume, verify,
# breaker) serves them too, and the index never lists them as models.
DOWNLOADS = ".downloads"

# Model types (CivitAI's, ComfyUI-Manager's) and singular spellings that mean one folder.
ALIASES = {
    **LEGACY,
    "diffusion_model": "diffusion_models",
    "text_encoder": "text_encoders",
    "checkpoint": "checkpoints",
    "unclip": "checkpoints",
    "lora": "loras",
    "locon": "loras",
    "dora": "loras",
    "embedding": "embeddings",
    "textualinversion": "embeddings",
    "hypernetwork": "hypernetworks",
    "upscale": "upscale_models",
    "upscaler": "upscale_models",
    "t2i-adapter": "controlnet",
    "t2i-style": "controlnet",
    "ip-adapter": "ipadapter",
    "taesd": "vae_approx",
    "motionmodule": "animatediff_models",
    "animatediff": "animatediff_models",
    "motion lora": "animatediff_motion_lora",
}


# A models folder a workflow may name: one plain name. It becomes a key of
# extra_model_paths.yaml, so nothing that could end the line or name a code folder.
DIRECTORY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
CODE_FOLDERS = frozenset({"custom_nodes", "user", "input", "output", "temp"})


def directory_problem(name: str) -> str:
    """Why `name` cannot be a models folder ("" when it can)."""
    if not DIRECTORY.match(name):
        return (
            f"The models folder {name!r} is not a plain folder name (letters, digits, '_', "
            "'.', '-'; at most 64)."
        )
    if name.lower() in CODE_FOLDERS:
        return f"{name!r} is one of ComfyUI's own folders, not a models folder."
    return ""


def canonical(name: str) -> str:
    """The folder that a folder path, a legacy folder name or a model type means
    ("unet/x" -> "diffusion_models", "LORA" -> "loras"); unknown names stay as they are."""
    key = name.replace("\\", "/").strip("/").split("/")[0].lower()
    return ALIASES.get(key, key)


def known(name: str) -> str:
    """`canonical(name)` when it is a models folder, else ""."""
    found = canonical(name)
    return found if found in FOLDERS else ""


def folders_for(directories: Iterable[str]) -> list[str]:
    """FOLDERS, then every other directory in `directories` (a workflow's own), in order."""
    extra = [d for d in dict.fromkeys(directories) if d and d not in FOLDERS]
    return [*FOLDERS, *extra]


def extra_model_paths(base: Path, directories: Iterable[str]) -> str:
    """ComfyUI's extra_model_paths.yaml pointing every folder of `folders_for(directories)`
    at `base`: a legacy folder is listed under the folder it feeds (ComfyUI splits a value
    on newlines), and every scalar is quoted, so no name can add a line."""
    feeding: dict[str, list[str]] = {}
    for folder in folders_for(directories):
        feeding.setdefault(LEGACY.get(folder, folder), []).append(f"{folder}/")
    lines = ["comfyhub:", f"    base_path: {json.dumps(str(base))}"]
    lines += [f"    {json.dumps(key)}: {json.dumps(chr(10).join(v))}" for key, v in feeding.items()]
    return "\n".join(lines) + "\n"
