"""Held-out check: ComfyUI's official SD1.5 / SDXL workflow templates, converted, validated and run.

    pip install comfyui-workflow-templates==0.1.95   # not a project dependency; never commit its files
    python bench/comfyui_templates.py [TEMPLATES_FOLDER] [--steps 2] [--size 64] [--only NAME ...]

The folder (default: the installed ``comfyui_workflow_templates`` package's ``templates/``) holds
ComfyUI UI-format workflows and an ``index.json`` that lists each template's models; the ones
listing SD1.5 or SDXL are checked. Each is converted with ``engine.comfyui_graph`` against our
registry's ``/object_info``, validated in a temporary installation where every model file the
template names exists as a stand-in (SD1.5 checkpoints: links to the embedded tiny-shapes model;
SDXL ones: a reduced-width random SDXL checkpoint; LoRAs, VAEs and embeddings to match; Lotus-D
diffusion models: a reduced-width random Lotus UNet, with a random null-prompt file), and,
when valid, run with image sizes shrunk to 64x64 and steps to 2 (literal inputs overridden after
conversion). Refusals are ComfyUI's error types (``missing_node_type: ControlNetLoader``, ...).
Prints a table and the pass rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("SD1.5", "SDXL")
# Inputs whose value is a model file, and the models/ folder it is looked for in.
MODEL_INPUTS = {"ckpt_name": "checkpoints", "vae_name": "vae", "lora_name": "loras", "unet_name": "diffusion_models",
                "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
                "control_net_name": "controlnet", "gligen_name": "gligen", "model_name": "upscale_models",
                "style_model_name": "style_models"}
# Where a node's input names another folder than MODEL_INPUTS says.
NODE_MODEL_INPUTS = {("CLIPVisionLoader", "clip_name"): "clip_vision"}
SIZE_INPUTS = {"width", "height", "target_width", "target_height"}
STEP_INPUTS = {"steps"}
STEP_INDEX_INPUTS = {"start_at_step", "end_at_step"}  # KSamplerAdvanced: scaled with the steps
EMBEDDED = ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors"


@dataclass
class Row:
    template: str
    family: str
    nodes: int = 0
    converted: str = "no"
    validated: str = "-"
    ran: str = "-"
    seconds: float = 0.0


def templates_folder(argument: str | None) -> Path:
    if argument:
        return Path(argument)
    try:
        import comfyui_workflow_templates
    except ImportError:
        raise SystemExit("give a templates folder, or pip install comfyui-workflow-templates==0.1.95") from None
    return Path(comfyui_workflow_templates.__file__).parent / "templates"


def selected_templates(folder: Path) -> list[tuple[str, str]]:
    """(name, family) of every template whose index entry lists SD1.5 or SDXL."""
    picked = []
    for category in json.loads((folder / "index.json").read_text(encoding="utf-8")):
        for entry in category.get("templates", []):
            family = next((m for m in entry.get("models") or [] if m in FAMILIES), None)
            if family:
                picked.append((entry["name"], family))
    return picked


def model_names(prompt: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(folder, file name) of every model file the prompt names (embeddings: in prompt text)."""
    import re

    for node in prompt.values():
        for name, value in (node.get("inputs") or {}).items():
            folder = NODE_MODEL_INPUTS.get((node.get("class_type"), name), MODEL_INPUTS.get(name))
            if isinstance(value, str) and folder is not None:
                yield folder, value
            elif isinstance(value, str):
                for match in re.finditer(r"embedding:([\w.\-/]+)", value):
                    yield "embeddings", match.group(1).rstrip(".,")


def write_stand_ins(root: Path, wanted: dict[str, set[tuple[str, str]]]) -> None:
    """Every named model file under root/models, as a stand-in of its template's family."""
    import torch
    from safetensors.torch import save_file

    from sgm.io.checkpoints import load_checkpoint
    from tests.workflows.model_files import write_byte_tokenizer, write_family_checkpoint, write_kohya_lora

    models = root / "models"
    store = root / "stand-ins"
    store.mkdir(parents=True)
    write_byte_tokenizer(models / "checkpoints" / "tokenizer")
    checkpoints = {"SD1.5": EMBEDDED, "SDXL": write_family_checkpoint(store / "sdxl.safetensors", "sdxl", seed=20)}
    loaded = {family: load_checkpoint(path) for family, path in checkpoints.items()}
    loras, vaes, embeddings = {}, {}, {}
    for family, checkpoint in loaded.items():
        loras[family] = write_kohya_lora(store / f"{family}-lora.safetensors", checkpoint.unet,
                                         list(checkpoint.text_encoders))
        vaes[family] = store / f"{family}-vae.safetensors"
        save_file({k: v.contiguous() for k, v in checkpoint.vae.state_dict().items()}, str(vaes[family]))
        widths = [t.shape[-1] for k, t in checkpoint.text_encoders[0].state_dict().items()
                  if k.endswith("token_embedding.weight") or k.endswith("embedding.weight")][:1] or [32]
        embeddings[family] = store / f"{family}-embedding.safetensors"
        save_file({"emb_params": torch.randn(2, widths[0], generator=torch.Generator().manual_seed(0)) * 0.01},
                  str(embeddings[family]))
    sources = {"checkpoints": checkpoints, "loras": loras, "vae": vaes, "embeddings": embeddings,
               **extra_stand_ins(store, loaded)}
    lotus = lotus_stand_ins(store, models) if any("lotus" in n.lower() for ns in wanted.values() for _, n in ns) \
        else None
    for family, names in wanted.items():
        for folder, name in sorted(names):
            target = models / folder / name
            if folder == "embeddings" and not target.suffix:
                target = target.with_suffix(".safetensors")
            source = sources.get(folder, {}).get(family)
            if folder == "diffusion_models" and "lotus" in name.lower():
                source = lotus
            if source is None or target.exists():
                continue  # a kind we have no stand-in for: validation reports the missing file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


def extra_stand_ins(store: Path, loaded: dict[str, Any]) -> dict[str, dict[str, Path]]:
    """ControlNet, GLIGEN, CLIP vision and upscale-model stand-ins for each family's checkpoint."""
    import json

    import torch
    from safetensors.torch import save_file

    from sgm.io.controlnet_files import controlnet_from_unet
    from sgm.nets.clip_vision import ClipVisionConfig
    from tests.sgm.clip_vision_factories import tiny_clip_vision, write_clip_vision_file
    from tests.sgm.model_factories import randomize_
    from tests.workflows.gligen_files import write_tiny_gligen

    out: dict[str, dict[str, Path]] = {"controlnet": {}, "gligen": {}, "clip_vision": {}, "upscale_models": {}}
    for family, checkpoint in loaded.items():
        unet = checkpoint.unet
        hints = json.loads(checkpoint.metadata.get("latentflow.config", "{}")).get("unet") \
            if hasattr(checkpoint, "metadata") else None
        torch.manual_seed(0)
        controlnet = randomize_(controlnet_from_unet(unet, hints), 0, std=0.02)
        out["controlnet"][family] = store / f"{family}-controlnet.safetensors"
        save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(out["controlnet"][family]),
                  metadata={"latentflow.config": json.dumps({"unet": hints})} if hints else None)
        out["gligen"][family] = write_tiny_gligen(store / f"{family}-gligen.safetensors", unet,
                                                  int(unet.context_dim))
        # Revision mixes image embeddings into the pooled text: the projection has the pooled width.
        pooled = int(unet.adm_in_channels) - 6 * 256 if getattr(unet, "adm_in_channels", None) else 32
        config = ClipVisionConfig(width=64, layers=2, heads=2, mlp_width=128, patch_size=14, image_size=28,
                                  projection_dim=pooled, activation="gelu")
        out["clip_vision"][family] = write_clip_vision_file(store / f"{family}-clip-vision.safetensors",
                                                            tiny_clip_vision(config), hints={"heads": 2})
        out["upscale_models"][family] = upscale_stand_in(store / "upscale-2x.safetensors")
    return out


def lotus_stand_ins(store: Path, models: Path) -> Path:
    """A reduced-width random Lotus-D UNet (SD 2 layout, 1024-wide text, the 4-wide task input) and a
    random stand-in of the null-prompt file LotusConditioning reads (models/text_encoders/)."""
    from tests.nodes.test_comfy_lotus import write_null_prompt_stand_in, write_tiny_lotus

    write_null_prompt_stand_in(models)
    return write_tiny_lotus(store / "lotus-d.safetensors", context_dim=1024, seed=30)


def upscale_stand_in(path: Path) -> Path:
    """The shipped tiny upscale model where it exists, else a small random RealESRGAN-compact."""
    shipped = ROOT / "models" / "upscale_models" / "tiny-shapes-2x.safetensors"
    if shipped.exists():
        return shipped
    import torch
    from safetensors.torch import save_file
    from sgm.io.upscalers import import_spandrel

    import_spandrel()  # torchvision may be a stand-in (see there)
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(0)
    model = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def shrink(prompt: dict[str, Any], object_info: dict[str, Any], size: int, steps: int) -> dict[str, Any]:
    """The prompt with literal image sizes set to ``size`` and step counts to ``steps``."""
    sizes = [v for node in prompt.values() for k, v in (node.get("inputs") or {}).items()
             if k in ("width", "height") and isinstance(v, int) and not isinstance(v, bool)
             and node["class_type"] in ("EmptyLatentImage", "EmptyLatent")]
    factor = size / max(sizes) if sizes else 1.0  # area offsets shrink with the image
    out = {}
    for node_id, node in prompt.items():
        inputs = dict(node.get("inputs") or {})
        info = object_info.get(node["class_type"], {}).get("input", {})
        declared = {**info.get("required", {}), **info.get("optional", {})}
        original_steps = inputs.get("steps") if isinstance(inputs.get("steps"), int) else None
        for name, value in inputs.items():
            if isinstance(value, bool) or not isinstance(value, int) or name not in declared:
                continue
            if name in SIZE_INPUTS:
                inputs[name] = size
            elif name in STEP_INPUTS:
                inputs[name] = min(value, steps)
            elif name in STEP_INDEX_INPUTS and original_steps:
                inputs[name] = min(round(value * steps / original_steps), 10000)
        for name in ("x", "y") if node["class_type"] == "ConditioningSetArea" else ():
            if isinstance(inputs.get(name), int):
                inputs[name] = round(inputs[name] * factor / 8) * 8
        for name in ("top", "bottom", "left", "right") if node["class_type"] == "ImagePadForOutpaint" else ():
            if isinstance(inputs.get(name), int):
                inputs[name] = min(inputs[name], 16)
        if node["class_type"] == "ImagePadForOutpaint" and isinstance(inputs.get("feathering"), int):
            inputs["feathering"] = min(inputs["feathering"], 8)
        out[node_id] = {**node, "inputs": inputs}
    return out


def error_types(report: Any) -> str:
    kinds: dict[str, set[str]] = {}
    for problem in report.errors:
        detail = problem.node_type if problem.error_type == "missing_node_type" else problem.input
        kinds.setdefault(problem.error_type, set()).add(str(detail or "?"))
    return "; ".join(f"{kind}: {', '.join(sorted(details))}" for kind, details in sorted(kinds.items()))


def input_images(root: Path, prompt: dict[str, Any], size: int) -> None:
    """Every image a LoadImage names, as a size x size RGBA picture with a transparent centre."""
    from tests.workflows.model_files import write_example_image

    for node in prompt.values():
        image = (node.get("inputs") or {}).get("image")
        if node.get("class_type") in ("LoadImage", "LoadImageMask") and isinstance(image, str):
            path = root / "input" / image
            if not path.exists():
                write_example_image(path, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="a folder of ComfyUI UI-format templates with index.json")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="template names to check (default: every SD1.5/SDXL one)")
    args = parser.parse_args(argv)

    import torch

    from engine.cache import ResultCache
    from engine.comfyui_graph import ui_graph_to_prompt
    from engine.registry import NodeRegistry
    from engine.scheduler import Executor
    from engine.settings import Settings
    from engine.validation import validate_document
    from nodes.builtin import build_nodes
    from nodes.memory import result_size
    from nodes.runtime import Runtime

    torch.manual_seed(0)
    folder = templates_folder(args.folder)
    picked = [(n, f) for n, f in selected_templates(folder) if not args.only or n in args.only]
    with tempfile.TemporaryDirectory(prefix="latentflow-templates-") as tmp:
        root = Path(tmp)
        settings = Settings.for_root(root, extra={"dtype": "fp32"})
        runtime = Runtime(settings, device="cpu")
        registry = NodeRegistry()
        registry.register_pack(build_nodes(runtime), "nodes.builtin")
        object_info = registry.object_info()

        rows, prompts, wanted = [], {}, {}
        for name, family in picked:
            row = Row(name, family)
            rows.append(row)
            graph = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            row.nodes = len(graph.get("nodes") or [])
            try:
                prompt, problems = ui_graph_to_prompt(graph, object_info)
            except Exception as error:  # a conversion bug is a result of this check, not its end
                row.converted = f"no ({type(error).__name__}: {error})"
                continue
            errors = [p for p in problems if p.severity == "error"]
            row.converted = "yes" if not errors else f"partly ({len(errors)} problems)"
            prompts[name] = prompt
            wanted.setdefault(family, set()).update(model_names(prompt))
        write_stand_ins(root, wanted)

        for row in rows:
            if row.template not in prompts:
                continue
            prompt = shrink(prompts[row.template], object_info, args.size, args.steps)
            input_images(root, prompt, args.size)
            report = validate_document(prompt, registry)
            if not report.ok:
                row.validated = f"no ({error_types(report)})"
                continue
            row.validated = "yes"
            # A cache per template: no result of an earlier template is reused (models stay loaded).
            executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                                services={"settings": settings, "output_dir": settings.output_dir})
            started = time.perf_counter()
            result = executor.run(report.workflow, services={"prompt": prompt})
            row.seconds = time.perf_counter() - started
            if result.status == "success":
                row.ran = "yes"
            else:
                failure = result.failure
                row.ran = f"no ({failure.node_type if failure else '?'}: {failure.message if failure else '?'})"

    print_table(rows)
    return 0


def print_table(rows: list[Row]) -> None:
    header = ("template", "family", "nodes", "converted?", "validated?", "ran?", "seconds")
    lines = [header] + [(r.template, r.family, str(r.nodes), r.converted, r.validated, r.ran,
                         f"{r.seconds:.1f}" if r.ran != "-" else "-") for r in rows]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(cell.replace("|", "/").replace("\n", " ")[:160] for cell in line) + " |")
    ran = sum(r.ran == "yes" for r in rows)
    valid = sum(r.validated == "yes" for r in rows)
    print(f"\nconverted {sum(r.converted == 'yes' for r in rows)}/{len(rows)}, validated {valid}/{len(rows)}, "
          f"ran {ran}/{len(rows)} (pass rate {ran / max(len(rows), 1):.0%}; {ran}/{valid} of the valid ones)")


if __name__ == "__main__":
    raise SystemExit(main())
