"""ComfyUI's ``folder_paths`` over latentflow's folders (comfy_packs.files).

``output_directory``, ``temp_directory`` and ``input_directory`` (and their ``get_*``
functions) are those of the prompt the calling node runs in (``comfy_packs.files.run_folder``):
computed on each read, so a worker's scratch folders are used where a run has them.
"""

from __future__ import annotations

import os as _os

from comfy_packs import files as _files
from comfy_packs.state import installation as _installation

_settings = _installation().settings
base_path = str(_settings.root)
models_dir = str(_settings.models_dir)
user_directory = _os.path.join(base_path, "user")
# Packs find "ComfyUI's folder" as the directory of this file and some write there (legacy
# packs copy their JavaScript into <it>/web/extensions at import): a folder of the user's
# installation, never our package's.
__file__ = _os.path.join(user_directory, "comfyui", "folder_paths.py")
supported_pt_extensions = _files.supported_pt_extensions
folder_names_and_paths = _files.build_folders()
filename_list_cache: dict = {}


def __getattr__(name: str) -> str:  # PEP 562: read per access, not once at import
    kinds = {"input_directory": "input", "output_directory": "output", "temp_directory": "temp"}
    if name in kinds:
        return _files.run_folder(kinds[name])
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


def get_input_directory() -> str:
    return _files.run_folder("input")


def get_output_directory() -> str:
    return _files.run_folder("output")


def get_temp_directory() -> str:
    return _files.run_folder("temp")


def get_user_directory() -> str:
    return user_directory


def get_directory_by_type(type_name: str) -> str | None:
    return _files.run_folders().get(type_name)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[folder_name][0])


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folders, extensions = folder_names_and_paths.setdefault(folder_name, ([], set(supported_pt_extensions)))
    if full_folder_path in folders:
        folders.remove(full_folder_path)
    if is_default:
        folders.insert(0, full_folder_path)
    else:
        folders.append(full_folder_path)


def get_filename_list(folder_name: str) -> list[str]:
    return _files.get_filename_list(folder_names_and_paths, folder_name)


def get_full_path(folder_name: str, filename: str) -> str | None:
    return _files.get_full_path(folder_names_and_paths, folder_name, filename)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"model in folder {folder_name!r} with filename {filename!r} not found; "
                                f"the folders are: {', '.join(folder_names_and_paths.get(folder_name, ([],))[0])}")
    return path


def filter_files_extensions(files, extensions):
    return _files.filter_files_extensions(files, extensions)


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0):
    return _files.save_image_path(filename_prefix, output_dir, image_width, image_height)


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    return _files.annotated_path(name, default_dir, _files.run_folders())


def exists_annotated_filepath(name: str) -> bool:
    return _os.path.exists(get_annotated_filepath(name))
