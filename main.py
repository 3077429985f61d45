"""latentflow command line: serve | run | validate | nodes | train | sample | convert | eval.

Each subcommand lives in its own module, imported only when that subcommand runs, so
``python main.py validate`` never imports torch and ``serve`` never imports training code.
A command module defines ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from functools import partial

# OpenMP threads that spin while waiting make small models ~100x slower whenever another
# process holds a core (measured: 1.2 s vs 16 ms per tiny-UNet call on 2 cores). Passive
# waiting costs nothing measurable on big models. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("engine.cli", "run a workflow JSON (or a PNG we saved) headlessly"),
    "validate": ("engine.cli", "check a workflow and report every problem at once"),
    "nodes": ("engine.cli", "list the node catalogue"),
    "serve": ("web.cli", "start the web editor and API server"),
    "convert": ("sgm.tools.convert", "convert checkpoints between formats and dtypes"),
    "train": ("sgm.tools.train", "train a VAE, a diffusion model or a LoRA"),
    "sample": ("nodes.sample_cli", "generate images from a prompt through the engine"),
    "eval": ("sgm.tools.eval_shapes", "evaluate a model on held-out shapes captions"),
}


@dataclass(frozen=True)
class FolderOptions:
    """ComfyUI's folder options, given before or after the subcommand."""

    base_directory: Path | None = None  # moves models/, input/, output/, user/, temp/, custom_nodes/
    input_directory: Path | None = None
    output_directory: Path | None = None
    extra_model_paths: tuple[Path, ...] = ()  # --extra-model-paths-config files, after ROOT's own


# Commands whose nodes load and run models take the speed options (see add_speed_options).
MODEL_COMMANDS = ("run", "serve", "sample")


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """--compile, --weight-dtype, --preview-method and --threads; they reach the nodes as ``settings.extra``."""
    from sgm.nets.speed_names import COMPILE_MODE_CHOICES, PREVIEW_METHOD_CHOICES, WEIGHT_DTYPE_CHOICES

    group = parser.add_argument_group("speed")
    group.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODE_CHOICES,
                       metavar="MODE",
                       help="run diffusion models through torch.compile (MODE: " + ", ".join(COMPILE_MODE_CHOICES)
                            + "; default 'default'; reduce-overhead adds CUDA graphs for fixed sizes). The first "
                            "image at each size compiles (minutes); compiled code is cached under user/compile-cache")
    group.add_argument("--weight-dtype", default=None, choices=WEIGHT_DTYPE_CHOICES, metavar="DTYPE",
                       help="store diffusion-model weights as " + ", ".join(WEIGHT_DTYPE_CHOICES[1:])
                            + " (about 1/2 the memory of fp16, 1/4 of fp32; compute stays in the usual dtype); "
                            "default: as loaded")
    group.add_argument("--preview-method", default=None, choices=PREVIEW_METHOD_CHOICES, metavar="METHOD",
                       help="live previews while sampling, made only while a browser watches, at most 4 a second: "
                            "latent2rgb (a linear map, nearly free), taesd (the tiny autoencoder's decoder from "
                            "models/vae_approx: taesd_decoder for SD 1.x/2.x, taesdxl_decoder for SDXL), none, or "
                            "auto (default: taesd where its file is there, else latent2rgb)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for torch (default: 1 for small models such as the embedded one, "
                            "all cores for bigger ones)")


def speed_settings(args: argparse.Namespace) -> dict[str, str]:
    """The speed options as ``settings.extra`` entries (threads "auto" unless given)."""
    extra = {"threads": "auto" if getattr(args, "threads", None) is None else str(args.threads)}
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise SystemExit(f"error: --threads must be 1 or more, got {args.threads}")
    if getattr(args, "compile", None):
        extra["compile"] = args.compile
    if getattr(args, "weight_dtype", None):
        extra["weight_dtype"] = args.weight_dtype
    if getattr(args, "preview_method", None):
        extra["preview_method"] = args.preview_method
    return extra


def build_settings(folders: FolderOptions = FolderOptions(), **overrides):
    """Installation folders: the repository's by default, moved by ``folders`` (the global
    options), then by a subcommand's own flags (``overrides``, e.g. ``run --output-dir``).

    ``extra_model_paths.yaml`` next to main.py is read when it exists, then every
    ``--extra-model-paths-config`` file; a bad one stops here with a message naming it."""
    from engine.model_paths import ModelPathsError
    from engine.settings import Settings

    default_config = ROOT / "extra_model_paths.yaml"
    configs = ((default_config,) if default_config.is_file() else ()) + folders.extra_model_paths
    values = {"input_dir": folders.input_directory, "output_dir": folders.output_directory,
              "workflows_dir": ROOT / "workflows", "extra_model_paths": configs}
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings.for_root(folders.base_directory or ROOT, **values)
    try:
        settings.model_paths  # read the YAML files now, so a mistake is reported before any work
    except ModelPathsError as error:
        raise SystemExit(f"error: {error}") from None
    return settings


def add_folder_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """ComfyUI's folder options; ``prefix`` keeps a subcommand's copy apart from the global one."""
    parser.add_argument("--base-directory", dest=f"{prefix}base_directory", type=Path, metavar="DIR",
                        help="folder holding models/, input/, output/, user/ and custom_nodes/ "
                             "(default: the installation)")
    parser.add_argument("--input-directory", dest=f"{prefix}input_directory", type=Path, metavar="DIR",
                        help="where input images and uploads are (default: input/ in the base directory)")
    parser.add_argument("--output-directory", dest=f"{prefix}output_directory", type=Path, metavar="DIR",
                        help="where output nodes write files (default: output/ in the base directory)")
    parser.add_argument("--extra-model-paths-config", dest=f"{prefix}extra_model_paths_config", type=Path,
                        action="append", default=[], metavar="FILE",
                        help="extra_model_paths.yaml in ComfyUI's format: more model folders, e.g. an "
                             "A1111 or ComfyUI install's (repeatable; extra_model_paths.yaml next to "
                             "main.py is read anyway)")


def folder_options(args: argparse.Namespace) -> FolderOptions:
    """The global folder options, those given after the subcommand winning."""
    def pick(name: str) -> Path | None:
        late = getattr(args, f"late_{name}", None)
        chosen = late if late is not None else getattr(args, name, None)
        return chosen.absolute() if chosen is not None else None

    configs = [*getattr(args, "extra_model_paths_config", []), *getattr(args, "late_extra_model_paths_config", [])]
    return FolderOptions(pick("base_directory"), pick("input_directory"), pick("output_directory"),
                         tuple(c.absolute() for c in configs))


def build_registry(custom_nodes: Path | None = ROOT / "custom_nodes", entry_points: bool = True,
                   settings=None):
    """The node registry: built-in packs, then custom_nodes/ plugins, then installed plugins.

    A built-in pack's ``NODES`` may be a list or a factory ``NODES(settings)`` (for
    choices computed from the installation's folders). A plugin that fails to import is
    recorded in ``registry.failures``; the rest still loads.
    """
    from engine.registry import NodeRegistry, import_pack
    from nodes import BUILTIN_PACKS

    settings = settings if settings is not None else build_settings()
    registry = NodeRegistry()
    for module_name in BUILTIN_PACKS:
        try:
            registry.register_pack(import_pack(module_name, settings), module_name)
        except Exception as error:  # reported like a plugin failure; other packs keep working
            registry._fail(module_name, error)
    from nodes.memory import result_size

    registry.result_size = result_size
    if custom_nodes is not None:
        from comfy_packs import ComfyPacks

        registry.foreign_packs = ComfyPacks(settings)  # packs written for ComfyUI (comfy_packs/)
        registry.load_custom_nodes(custom_nodes)
    if entry_points:
        registry.load_entry_points()
    return registry


def build_backend(settings, custom_nodes: Path | None, *, workers: int | None = None, ray_address: str | None = None,
                  worker_files: str | None = None):
    """The execution backend for ``--workers N`` / ``--ray ADDRESS``: workers that build this
    installation's registry themselves (``build_registry`` pickles by name). ``worker_files``:
    ``send`` (files travel back to this server) or ``shared`` (one folder all workers write)."""
    from cluster import backend_for

    return backend_for(build_registry, settings, custom_nodes, workers=workers, ray_address=ray_address,
                       worker_files=worker_files)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only the ``selected`` command's module is imported (all for --help)."""
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    add_folder_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if selected is not None and name != selected:
            continue
        module = _command_module(module_name)
        if module is None:
            continue
        configure = getattr(module, f"configure_{name}", None) or module.configure
        configure(sub_parser)
        if name in MODEL_COMMANDS:
            add_speed_options(sub_parser)
        add_folder_options(sub_parser.add_argument_group("folders (also accepted before the command)"),
                           prefix="late_")
        sub_parser.set_defaults(_module=module_name, build_registry=build_registry,
                                build_settings=build_settings, build_backend=build_backend)
    return parser


def _command_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return None  # command not available in this install
        raise


def _command_name(argv: list[str]) -> str | None:
    """The subcommand's name: the first argument that is neither an option nor the value
    of a global folder option (``main.py --base-directory DIR run ...``)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_folder_options(pre)
    _, rest = pre.parse_known_args(argv)
    return next((a for a in rest if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _command_name(argv)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    # every command builds its settings through this, so the folder options reach them all
    args.build_settings = partial(build_settings, folder_options(args))
    if args.command in MODEL_COMMANDS:
        args.build_settings = partial(args.build_settings, extra=speed_settings(args))
    module = importlib.import_module(args._module)
    runner = getattr(module, f"run_{args.command}", None) or module.run
    return int(runner(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
