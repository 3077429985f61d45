"""ComfyUI's node interface for the SD 1.x / 2.x / SDXL core, over our own nodes.

ComfyUI's workflows, templates and API clients name nodes and inputs as ComfyUI 0.3.64 does
(its ``/object_info``: class name, input names, widget order, types, defaults, ranges,
outputs, category). Each node here is an adapter with exactly that interface whose body
calls one of our node functions (``ours["EncodeLatent"].function(...)``) or one library
function, so nothing is implemented twice. Our typed nodes (LoadCheckpoint, TextEncode,
EncodeLatent, Decode, SampleLatent, ...) stay the first-class catalogue; these carry
``compat="comfyui"`` in ``/object_info`` so an editor can list them apart.

Two of ours already have ComfyUI's exact interface and are not repeated here: SaveImage and
PreviewImage (``nodes.images``). PrimitiveNode and Reroute exist only in ComfyUI's UI graph
(``engine.comfyui_graph`` resolves them). What we cannot honour (a ``CLIPLoader`` type we
have no encoder for, fp8 weights, the ``bislerp`` method) fails in the node with a message
naming the node, the input and what is supported.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.api import NodeSpec
from nodes.runtime import Runtime

COMPAT = "comfyui"

# Every ComfyUI class name this installation answers with ComfyUI's interface: the adapters
# of this package plus our own nodes that have that interface already.
NATIVE = ("SaveImage", "PreviewImage")


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    """The adapters, given our built nodes by id (they call ``ours[id].function``)."""
    from nodes.comfy import (clip_vision, conditioning, controlnet, custom_sampling, gligen, image, image_extra,
                             image_ops, latent, latent_ops, loaders, lotus, masks, masks_extra, model_merge,
                             model_patches, notes, sampling_nodes, save_extra, style_model, upscale,
                             utils_nodes)

    return [*loaders.nodes(runtime, ours), *conditioning.nodes(runtime, ours), *latent.nodes(runtime, ours),
            *custom_sampling.nodes(runtime, ours), *image.nodes(runtime, ours), *image_ops.nodes(runtime, ours),
            *masks.nodes(runtime, ours), *clip_vision.nodes(runtime, ours), *model_merge.nodes(runtime, ours),
            *controlnet.nodes(runtime, ours), *gligen.nodes(runtime, ours), *upscale.nodes(runtime, ours),
            *lotus.nodes(runtime, ours), *sampling_nodes.nodes(runtime, ours), *model_patches.nodes(runtime, ours),
            *latent_ops.nodes(runtime, ours), *image_extra.nodes(runtime, ours),
            *masks_extra.nodes(runtime, ours), *utils_nodes.nodes(runtime, ours), *style_model.nodes(runtime, ours),
            *save_extra.nodes(runtime, ours), *notes.nodes()]


def call(ours: Mapping[str, NodeSpec], node_id: str, **inputs: Any) -> Any:
    """Run our node ``node_id``'s function with ``inputs``; its declared defaults fill the rest
    (as the scheduler would)."""
    spec = ours[node_id]
    defaults = {i.name: i.default for i in spec.inputs if i.name not in inputs and i.default is not None}
    return spec.function(**defaults, **inputs)


def comfyui_names(specs: list[NodeSpec]) -> list[str]:
    """The ComfyUI class names among ``specs``: adapters and the native ones."""
    return [s.id for s in specs if s.compat == COMPAT or s.id in NATIVE]
