"""``comfy.sd.load_checkpoint_guess_config``: a checkpoint path in a checkpoints folder, loaded by
our loader (shared model cache, same fingerprints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfy_packs import state
from comfy_packs.models import ComfyClip, ComfyModel, ComfyVae, NotSupportedError


def load_checkpoint_guess_config(ckpt_path: str, output_vae: bool = True, output_clip: bool = True,
                                 embedding_directory: Any = None, output_clipvision: bool = False,
                                 **_: Any) -> tuple[Any, Any, Any, Any]:
    if output_clipvision:
        raise NotSupportedError("load_checkpoint_guess_config(output_clipvision=True)", "CLIP vision models")
    path = Path(ckpt_path).resolve()
    paths = state.installation().settings.model_paths
    for folder in paths.folders("checkpoints"):
        root = folder.path.resolve()
        if root in path.parents:
            name = path.relative_to(root).as_posix()
            model, clip, vae = state.call_ours("LoadCheckpoint", ckpt_name=name)
            return (ComfyModel(model), ComfyClip(clip) if output_clip and clip is not None else None,
                    ComfyVae(vae) if output_vae and vae is not None else None, None)
    raise NotSupportedError(f"loading {ckpt_path} (outside the checkpoints folders)", "checkpoint loader",
                            "put the file in a checkpoints folder (models/checkpoints or extra_model_paths.yaml)")
