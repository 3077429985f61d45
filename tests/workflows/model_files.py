"""A temporary installation with tiny random-weight checkpoints of every family.

``make_installation(root)`` writes, through our own save path (``sgm.io.checkpoints.save_checkpoint``
via ``tests.sgm.model_factories.write_tiny_checkpoint``):

  models/checkpoints/<CHECKPOINTS[family]>   a tiny checkpoint of each family, under the name
                                             of the released file the shipped workflows use
                                             (sd1, sd2, sdxl: CLIP-L / OpenCLIP / both towers;
                                             sd1-inpaint: a 9-channel UNet)
  models/checkpoints/tiny-shapes.safetensors the embedded model when it exists, else a random
                                             stand-in in its format (our tiny text encoder)
  models/checkpoints/tokenizer/              a byte-level CLIP vocabulary (no merges), so the
                                             CLIP towers need no downloaded files
  models/loras/<LORAS[...]>                  kohya-layout LoRAs (UNet + text) for sd1 and for
                                             tiny-shapes
  input/example.png                          a 64x64 RGBA picture (transparent centre)

Text towers are 64 wide (CLIP's head size) with two layers (SD 2.x and SDXL read the
penultimate); the UNets' context width is set to match. Everything is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sgm.nets.clip_models import ClipTextConfig, ClipTextModel, OpenClipTextModel
from sgm.text.tokenizer import END_TOKEN, START_TOKEN, bytes_to_unicode
from tests.sgm.model_factories import randomize_, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors"
CHECKPOINTS = {
    "sd1": "v1-5-pruned-emaonly.safetensors",
    "sd2": "v2-1_512-ema-pruned.safetensors",
    "sdxl": "sd_xl_base_1.0.safetensors",
    "sd1-inpaint": "sd-v1-5-inpainting.safetensors",
    "tiny-shapes": "tiny-shapes.safetensors",
}
LORAS = {"sd1": "sd1-lora.safetensors", "tiny-shapes": "tiny-shapes-lora.safetensors"}
TEXT_WIDTH = 64
POOLED_DIM = 32
VOCAB_SIZE = 514  # 256 bytes + 256 end-of-word bytes + start + end
SHAPES_VOCAB = ("a", "at", "background", "blue", "bottom", "center", "circle", "green", "in", "large",
                "left", "on", "purple", "red", "right", "small", "square", "star", "the", "top",
                "triangle", "white", "yellow")


def write_byte_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer folder with the 512 byte tokens and no merges (vocab.json + merges.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [START_TOKEN, END_TOKEN]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _tower(layout: str, seed: int, projection: int | None = None) -> torch.nn.Module:
    config = ClipTextConfig(width=TEXT_WIDTH, layers=2, heads=1, mlp_width=2 * TEXT_WIDTH, vocab_size=VOCAB_SIZE,
                            context_length=77, projection_dim=projection,
                            activation="quick_gelu" if layout == "clip" else "gelu")
    torch.manual_seed(seed)
    tower = ClipTextModel(config) if layout == "clip" else OpenClipTextModel(config)
    with torch.no_grad():
        for parameter in tower.parameters():
            if parameter.is_meta or parameter.numel() == 0:
                continue
            torch.nn.init.normal_(parameter, std=0.05)
        for name, parameter in tower.named_parameters():
            if "ln" in name or "layer_norm" in name:
                parameter.add_(1.0 if name.endswith("weight") else 0.0)
    return randomize_(tower, seed, std=0.01).eval()


def text_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Released-layout text tensors (with their prefixes) of a tiny ``family`` text encoder."""
    def prefixed(prefix: str, tower: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in tower.state_dict().items()}

    if family == "sd1":
        return prefixed("cond_stage_model.", _tower("clip", seed))
    if family == "sd2":
        return prefixed("cond_stage_model.", _tower("open_clip", seed))
    if family == "sdxl":
        return {**prefixed("conditioner.embedders.0.", _tower("clip", seed)),
                **prefixed("conditioner.embedders.1.", _tower("open_clip", seed + 1, projection=POOLED_DIM))}
    raise ValueError(f"no tiny text encoder for {family!r}")


def write_family_checkpoint(path: Path, family: str, *, inpaint: bool = False, seed: int = 0) -> Path:
    context = 2 * TEXT_WIDTH if family == "sdxl" else TEXT_WIDTH
    return write_tiny_checkpoint(path, family, inpaint=inpaint, seed=seed, context_dim=context,
                                 pooled_dim=POOLED_DIM, text_state_dict=text_state_dict(family, seed))


def write_tiny_shapes_standin(path: Path, seed: int = 0, config: dict[str, object] | None = None) -> Path:
    """A random model in the embedded model's format: our tiny word-level text encoder.

    ``config``: extra ``latentflow.config`` hints (e.g. prediction and zero_terminal_snr).
    """
    from sgm.text.tiny_text import TinyTextConditioner, TinyTextConfig, TinyTextEncoder

    torch.manual_seed(seed)
    encoder = TinyTextEncoder(TinyTextConfig(vocab=SHAPES_VOCAB, max_length=16, width=32, layers=1, heads=2))
    conditioner = TinyTextConditioner(encoder)
    metadata = {"latentflow.family": "tiny-shapes", **conditioner.metadata()}
    return write_tiny_checkpoint(path, "sd1", seed=seed, context_dim=32, text_state_dict=conditioner.state_dict(),
                                 metadata=metadata, config=config)


def write_kohya_lora(path: Path, unet: torch.nn.Module, towers: list[torch.nn.Module], *, rank: int = 2,
                     seed: int = 0, alpha: float = 1.0, text: bool = True) -> Path:
    """A kohya-layout LoRA on every attention projection of ``unet`` (and the first text tower's q/v)."""
    from safetensors.torch import save_file

    from sgm.io.lora import kohya_unet_names

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    stems = kohya_unet_names(unet)
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ("to_q", "to_k", "to_v"):
            stem = stems[name]
            tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
            tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    if text and towers:
        for name, module in towers[0].named_modules():
            if not (isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ("q_proj", "v_proj", "qkv")):
                continue
            stem = "lora_te_" + name.removeprefix("transformer.").replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_example_image(path: Path, size: int = 64) -> Path:
    """An RGBA test picture: a gradient with a transparent square in the centre (the mask)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., 0] = (x * 255 // (size - 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // (size - 1)).astype(np.uint8)
    rgba[..., 2] = 128
    rgba[..., 3] = 255
    quarter = size // 4
    rgba[quarter:3 * quarter, quarter:3 * quarter, 3] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def make_installation(root: Path, *, use_embedded: bool = True) -> Path:
    """Write the tiny models, tokenizer, LoRA and input image under ``root``; returns ``root``."""
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_byte_tokenizer(checkpoints / "tokenizer")
    for key, family, inpaint, seed in (("sd1", "sd1", False, 0), ("sd2", "sd2", False, 10),
                                       ("sdxl", "sdxl", False, 20), ("sd1-inpaint", "sd1", True, 30)):
        write_family_checkpoint(checkpoints / CHECKPOINTS[key], family, inpaint=inpaint, seed=seed)
    if use_embedded and EMBEDDED.is_file():
        (checkpoints / EMBEDDED.name).symlink_to(EMBEDDED)
    else:
        write_tiny_shapes_standin(checkpoints / EMBEDDED.name)
    from sgm.io.checkpoints import load_checkpoint

    for key in ("sd1", "tiny-shapes"):
        loaded = load_checkpoint(checkpoints / CHECKPOINTS[key])
        write_kohya_lora(root / "models" / "loras" / LORAS[key], loaded.unet, list(loaded.text_encoders))
    for kind in ("vae", "embeddings", "unet", "text_encoders"):
        (root / "models" / kind).mkdir(parents=True, exist_ok=True)
    write_example_image(root / "input" / "example.png")
    return root
