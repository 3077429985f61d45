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


def build_settings(**overrides):
    """Installation folders: the repository's by default, overridable by CLI flags."""
    from engine.settings import Settings

    return Settings.for_root(ROOT, **overrides)


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
        registry.load_custom_nodes(custom_nodes)
    if entry_points:
        registry.load_entry_points()
    return registry


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only the ``selected`` command's module is imported (all for --help)."""
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.splitlines()[0])
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
        sub_parser.set_defaults(_module=module_name, build_registry=build_registry,
                                build_settings=build_settings)
    return parser


def _command_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return None  # command not available in this install
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    runner = getattr(module, f"run_{args.command}", None) or module.run
    return int(runner(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
