"""Test stand-in for ComfyUI's ``folder_paths``: model folders under one temp dir, output/input dirs.

Only what the pack and the test stand-ins of core nodes call. Configure with ``configure(...)``.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
FOLDERS = ("diffusion_models", "vae", "text_encoders", "checkpoints", "loras")

models_dir = ""
output_directory = ""
input_directory = ""
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def configure(models: str, output: str, input: str) -> None:
    global models_dir, output_directory, input_directory
    models_dir, output_directory, input_directory = models, output, input
    folder_names_and_paths.clear()
    for name in FOLDERS:
        folder_names_and_paths[name] = ([os.path.join(models, name)], supported_pt_extensions)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name: str) -> list[str]:
    roots, extensions = folder_names_and_paths[folder_name]
    found = set()
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                if os.path.splitext(name)[1].lower() in extensions:
                    found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    for root in folder_names_and_paths[folder_name][0]:
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_user_directory() -> str:
    return os.path.join(os.path.dirname(output_directory), "user")


def get_output_directory() -> str:
    return output_directory


def get_input_directory() -> str:
    return input_directory


def get_annotated_filepath(name: str) -> str:
    return os.path.join(input_directory, name)


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """(folder, file name stem, next counter, subfolder, prefix) like ComfyUI's save nodes."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    stem = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    os.makedirs(folder, exist_ok=True)
    counters = []
    for name in os.listdir(folder):
        head, _, rest = name.partition(stem + "_")
        if head == "" and rest[:5].isdigit():
            counters.append(int(rest[:5]))
    return folder, stem, max(counters, default=0) + 1, subfolder, filename_prefix
