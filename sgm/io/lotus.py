"""Lotus-D dense-prediction models: how a file is told apart, and what sampling one needs.

Lotus (He et al. 2024, "Lotus: Diffusion-based Visual Foundation Model for High-quality Dense
Prediction") fine-tunes Stable Diffusion 2's UNet to map an image's latent straight to the latent
of its depth (or normal) map in one step:

- *x0 prediction at a single timestep* (sec. 3.2): the network output is the clean target
  latent, and it is evaluated only at t = 999 (sigma far above the schedule's, so the timestep
  snaps to the last one). The input is the image latent itself, not noise: the VE input
  scaling ``c_in = 1 / sqrt(sigma^2 + 1)`` of an eps model would all but erase it, so here
  ``c_in = 1`` (``ImgToImgDiscreteModelSampling``).
- *a task switcher* (sec. 3.3): a 2-vector ``s`` (``(1, 0)`` for the dense annotation) embedded
  as ``[sin s, cos s]`` enters through a class-embedding MLP, which in the released single-file
  layout is SDXL's vector input ``label_emb.0`` with 4 input channels. That width is what tells
  a Lotus UNet from SD 2.x's other vector-input UNets (unCLIP: 1536 / 2048).
- *the null prompt*: text conditioning is the frozen SD 2 text encoder's output for the empty
  prompt *without padding*, i.e. the two tokens ``[BOS, EOS]``: shape (1, 2, 1024). CLIP's
  causal attention makes those two rows equal to the first two of the usual 77-token encoding
  of "" (``null_prompt_embedding``); the values are stored in a small file
  (``NULL_PROMPT_FILE``) because Lotus files carry no text encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgm.io.state_dict import CheckpointError
from sgm.sampling.model_sampling_extra import ImgToImgDiscreteModelSampling

LOTUS_FAMILY = "lotus"
LOTUS_ADM_CHANNELS = 4  # [sin s, cos s] of the 2-vector task switcher
LOTUS_TIMESTEP = 999  # the one timestep Lotus-D is trained and run at
DEPTH_TASK = (1.0, 0.0)  # the switcher's "annotation" task (what ComfyUI always sends)
NULL_PROMPT_FILE = "lotus-null-prompt.safetensors"
NULL_PROMPT_KEY = "prompt_embeds"
NULL_PROMPT_TOKENS = 2  # [BOS, EOS]: the empty prompt, unpadded


def lotus_model_sampling(model_sampling: Any = None) -> ImgToImgDiscreteModelSampling:
    """The Lotus sampling on ``model_sampling``'s discrete schedule (SD's when None or not discrete)."""
    schedule = {k: getattr(model_sampling, k) for k in ("num_timesteps", "beta_start", "beta_end")
                if hasattr(model_sampling, k)}
    return ImgToImgDiscreteModelSampling(prediction="eps", **schedule)


def is_lotus_config(config: dict[str, Any]) -> bool:
    """Whether UNet keyword arguments (``infer_unet_config``) describe a Lotus-D UNet: a 4-channel
    SD-style UNet whose vector input is the 4-wide task embedding."""
    return (config.get("num_classes") == "sequential" and config.get("adm_in_channels") == LOTUS_ADM_CHANNELS
            and config.get("in_channels") == 4)


def is_lotus_unet(unet: Any) -> bool:
    """``is_lotus_config`` for a built ``UNetModel``."""
    return is_lotus_config({name: getattr(unet, name, None)
                            for name in ("num_classes", "adm_in_channels", "in_channels")})


def task_embedding(task: tuple[float, float] = DEPTH_TASK) -> torch.Tensor:
    """The task switcher's vector input (Lotus sec. 3.3): ``[sin s0, sin s1, cos s0, cos s1]``, (1, 4)
    float32. For the default task: [sin 1, 0, cos 1, 1] = [0.8415, 0, 0.5403, 1]."""
    s = torch.tensor(task, dtype=torch.float64)
    return torch.cat([s.sin(), s.cos()]).float().unsqueeze(0)


def null_prompt_embedding(conditioner: Any) -> torch.Tensor:
    """The empty prompt's unpadded encoding (1, 2, C) from an SD 2.x text conditioner
    (``sgm.text.encoders``): the first two rows of its encoding of "" (causal attention: the
    [BOS, EOS] rows do not see the padding after them)."""
    context, _ = conditioner.encode_text([""])
    if context.ndim != 3 or context.shape[1] < NULL_PROMPT_TOKENS:
        raise ValueError(f"expected a (1, T, C) text encoding, got shape {tuple(context.shape)}")
    return context[:, :NULL_PROMPT_TOKENS].detach().float().cpu().clone()


def save_null_prompt(path: str | Path, embedding: torch.Tensor) -> Path:
    """Write a null-prompt embedding (1, T, C) as ``NULL_PROMPT_FILE``'s format; returns the path."""
    from safetensors.torch import save_file

    _check_null_prompt(embedding, Path(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({NULL_PROMPT_KEY: embedding.detach().float().cpu().contiguous()}, str(path))
    return path


def load_null_prompt(path: str | Path) -> torch.Tensor:
    """The null-prompt embedding (1, T, C) float32 stored in ``path`` (key ``prompt_embeds``)."""
    from sgm.io.state_dict import read_state_dict

    path = Path(path)
    tensors, _ = read_state_dict(path)
    if NULL_PROMPT_KEY not in tensors:
        raise CheckpointError(f"{path.name}: no {NULL_PROMPT_KEY!r} tensor (found {sorted(tensors)[:5]}); write the "
                              "file with sgm.io.lotus.save_null_prompt")
    embedding = tensors[NULL_PROMPT_KEY].float().clone()
    _check_null_prompt(embedding, path)
    return embedding


def _check_null_prompt(embedding: torch.Tensor, path: Path) -> None:
    if embedding.ndim != 3 or embedding.shape[0] != 1 or not torch.isfinite(embedding).all():
        raise CheckpointError(f"{path.name}: a null-prompt embedding must be a finite (1, tokens, width) tensor, "
                              f"got shape {tuple(embedding.shape)}")
