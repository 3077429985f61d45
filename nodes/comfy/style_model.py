"""ComfyUI's style model nodes: load TencentARC's T2I style adapter and append its tokens, computed from
an image's CLIP vision hidden states, to the text conditioning (SD 1.x).

The network is ``sgm.nets.style_adapter``; the file reading and the joining of tokens to conditions are
``sgm.io.style_model_files``.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.api import Choice, Float, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, model_file_fingerprint

STYLE_MODELS = ("style_models",)
# sgm.nets.style_adapter.STRENGTH_TYPES, written out so that listing the nodes does not import torch
STRENGTH_TYPES = ("multiply", "attn_bias")


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    @node("StyleModelLoader", display_name="Load Style Model", category="loaders", compat=COMPAT,
          fingerprint=model_file_fingerprint(models, STYLE_MODELS, "style_model_name"))
    def style_model_loader(
        style_model_name: model_choice(models, *STYLE_MODELS,
                                       tooltip="a T2I style adapter in models/style_models/ "
                                               "(t2iadapter_style_sd14v1.pth)"),
    ) -> Out(STYLE_MODEL="STYLE_MODEL"):
        """Load TencentARC's T2I style adapter: it turns a CLIP ViT-L image encoding into extra prompt tokens
        for SD 1.x models. (Flux Redux files are recognised and refused.)"""
        from sgm.io.style_model_files import load_style_model

        path = runtime.resolve_model(STYLE_MODELS, style_model_name, "StyleModelLoader", "style_model_name")
        return runtime.load_model(path, "style_model", "StyleModelLoader",
                                  lambda dtype: load_style_model(path, dtype=dtype), prepare=False)

    @node("StyleModelApply", display_name="Apply Style Model", category="conditioning/style_model", compat=COMPAT)
    def style_model_apply(
        conditioning: "CONDITIONING",
        style_model: "STYLE_MODEL",
        clip_vision_output: "CLIP_VISION_OUTPUT",
        strength: Float(min=0.0, max=10.0, step=0.001, tooltip="weight of the style tokens") = 1.0,
        *,  # strength_type has no default (ComfyUI's first choice), so it is keyword-only after strength
        strength_type: Choice(choices=STRENGTH_TYPES,
                              tooltip="multiply: the style tokens are scaled by strength; attn_bias: only "
                                      "strength 1.0 is supported for SD 1.x models"),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Append the style model's tokens for the encoded image(s) to every condition's prompt tokens (a batch
        of images gives all their tokens, one after another)."""
        from sgm.io.style_model_files import append_style
        from sgm.nets.style_adapter import style_tokens

        def work() -> Any:
            with runtime.models.use(style_model) as device:
                return style_tokens(style_model, clip_vision_output.last_hidden_state, device)

        try:
            tokens = runtime.models.retry_on_oom(work, "StyleModelApply")
            return append_style(conditioning, tokens, float(strength), strength_type)
        except ValueError as error:
            raise ValueError(f"StyleModelApply: {error}") from None

    return [style_model_loader, style_model_apply]
