"""The models folders: one list for the analyzer, the finder and extra_model_paths.yaml.

`COMFYUI` is every folder current ComfyUI's `folder_paths` knows (custom_nodes aside: it
holds code, not models); `LEGACY` the older folder names ComfyUI still reads into one of
them; `PACKS` folders that popular custom-node packs register for their models. A workflow
may name any other directory: `folders_for` adds it, so ComfyUI is pointed at every folder a
project's models are put in.
"""

from collections.abc import Iterable

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
# Folder names ComfyUI reads into another folder (folder_paths.map_legacy and the extra
# paths of controlnet): models saved there are found under the new name.
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
