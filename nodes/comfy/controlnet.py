"""ComfyUI's ControlNet nodes: load a ControlNet or T2I-Adapter, apply it to conditioning.

The models load by content (``sgm.io.controlnet_files``: ldm/cldm or diffusers ControlNets, union
ControlNets, control-LoRAs, full and light T2I-Adapters), the application is
``sgm.sampling.guiders.apply_control`` and the guider runs the chain while sampling (strength, start/end
percent, stacked controls summed; a control-LoRA is completed there by the UNet being sampled). Shuffle
ControlNets are recognised by file name as ComfyUI does (``*_shuffle`` / ``*_shuffle_fp16``) and their residuals
averaged over the feature map (``sgm.io.controlnet_files.wants_global_average_pooling``).
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.api import Choice, Float, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, model_file_fingerprint

CONTROLNET = ("controlnet",)
STRENGTH = dict(default=1.0, min=0.0, max=10.0, step=0.01)
PERCENT = dict(min=0.0, max=1.0, step=0.001)
# SetUnionControlNetType's choices: "auto" and ``sgm.nets.controlnet_union.UNION_TYPES`` in index order
# (written out here so that listing the nodes does not import torch; a test keeps them equal).
UNION_TYPE_CHOICES = ("auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd",
                      "normal", "segment", "tile", "repaint")


def _hint(image: Any) -> Any:
    """IMAGE (B, H, W, C) in [0, 1] -> the hint (B, C, H, W)."""
    return image.movedim(-1, 1).float()


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    fingerprint = model_file_fingerprint(models, CONTROLNET, "control_net_name")

    def load(node_id: str, name: str, model: Any = None) -> Any:
        from sgm.io.controlnet_files import load_control_file

        path = runtime.resolve_model(CONTROLNET, name, node_id, "control_net_name")
        if model is None:
            return runtime.load_model(path, "controlnet", node_id,
                                      lambda dtype: load_control_file(path, dtype=dtype), prepare=False)
        # A "diff" ControlNet is completed by this model's UNet: one cache entry per UNet.
        return runtime.load_model(
            path, f"controlnet-diff:{id(model.unet)}", node_id,
            lambda dtype: load_control_file(path, dtype=dtype, unet_state=model.unet.state_dict()), prepare=False)

    @node("ControlNetLoader", display_name="Load ControlNet Model", category="loaders", compat=COMPAT,
          fingerprint=fingerprint)
    def controlnet_loader(
        control_net_name: model_choice(models, *CONTROLNET,
                                       tooltip="a ControlNet or T2I-Adapter in models/controlnet/ or models/t2i_adapter/"),
    ) -> Out(CONTROL_NET="CONTROL_NET"):
        """Load a ControlNet (ldm/cldm or diffusers layout, SD 1.x / 2.x / SDXL; union ControlNets such as
        controlnet-union-sdxl-1.0 / ProMax; Stability AI's control-LoRAs, completed by the model they are
        sampled with) or a T2I-Adapter (full SD / SDXL or light), recognised by the file's content."""
        return load("ControlNetLoader", control_net_name)

    @node("DiffControlNetLoader", display_name="Load ControlNet Model (diff)", category="loaders", compat=COMPAT,
          fingerprint=fingerprint)
    def diff_controlnet_loader(
        model: "MODEL",
        control_net_name: model_choice(models, *CONTROLNET, tooltip="a ControlNet in models/controlnet/"),
    ) -> Out(CONTROL_NET="CONTROL_NET"):
        """Load a ControlNet; a "diff" ControlNet (weights stored as differences from a UNet) is added to
        ``model``'s UNet weights. Other files load as ControlNetLoader loads them."""
        return load("DiffControlNetLoader", control_net_name, model)

    @node("ControlNetApply", display_name="Apply ControlNet (OLD)", category="conditioning/controlnet",
          compat=COMPAT, deprecated=True)
    def controlnet_apply(
        conditioning: "CONDITIONING",
        control_net: "CONTROL_NET",
        image: "IMAGE",
        strength: Float(**STRENGTH),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Control every condition with ``image`` (the hint, e.g. an edge map) over the whole sampling."""
        from sgm.sampling.guiders import apply_control

        return apply_control([conditioning], control_net, _hint(image), strength)[0]

    @node("ControlNetApplyAdvanced", display_name="Apply ControlNet", category="conditioning/controlnet",
          compat=COMPAT)
    def controlnet_apply_advanced(
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        control_net: "CONTROL_NET",
        image: "IMAGE",
        strength: Float(**STRENGTH),
        start_percent: Float(default=0.0, **PERCENT),
        end_percent: Float(default=1.0, **PERCENT),
        vae: "VAE" = None,
    ) -> Out(positive="CONDITIONING", negative="CONDITIONING"):
        """Control the positive and the negative conditioning with ``image`` from ``start_percent`` to
        ``end_percent`` of the sampling; several applications stack (their effects add up). SD 1.x / 2.x / SDXL
        ControlNets take the image itself, so ``vae`` is accepted and not needed."""
        from sgm.sampling.guiders import apply_control

        pos, neg = apply_control([positive, negative], control_net, _hint(image), strength, start_percent,
                                 end_percent)
        return pos, neg

    @node("SetUnionControlNetType", display_name="SetUnionControlNetType", category="conditioning/controlnet",
          compat=COMPAT)
    def set_union_controlnet_type(
        control_net: "CONTROL_NET",
        type: Choice(choices=UNION_TYPE_CHOICES,  # noqa: A002 - ComfyUI's input name
                     tooltip="the kind of hint image a union ControlNet is given; auto: no type"),
    ) -> Out(CONTROL_NET="CONTROL_NET"):
        """Tell a union ControlNet (controlnet-union-sdxl-1.0, ProMax) what its hint images are. The loaded model
        is shared, not changed; "auto" runs it without a type, as a loaded union ControlNet runs."""
        from sgm.nets.controlnet_union import union_type_index

        control_type = union_type_index(type)
        if hasattr(control_net, "with_type"):
            return control_net.with_type(control_type)
        if not control_type:  # "auto" on another control model: nothing to set
            return control_net
        raise ValueError(f"SetUnionControlNetType: type {type!r} needs a union ControlNet (e.g. "
                         f"controlnet-union-sdxl-1.0); control_net is a {control_net.__class__.__name__}. Use 'auto' "
                         "or connect a union ControlNet")

    return [controlnet_loader, diff_controlnet_loader, controlnet_apply, controlnet_apply_advanced,
            set_union_controlnet_type]
