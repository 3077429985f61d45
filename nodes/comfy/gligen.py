"""ComfyUI's GLIGEN nodes: load a GLIGEN model, ground a phrase in a box (``sgm.nets.gligen``)."""

from __future__ import annotations

from typing import Mapping

from engine.api import Int, NodeSpec, Out, Text, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, model_file_fingerprint
from nodes.text import encode_prompt

GLIGEN = ("gligen",)
BOX = dict(min=8, max=16384, step=8)
LATENT_FACTOR = 8  # boxes are given in image pixels and kept in latent pixels, as ComfyUI does


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    fingerprint = model_file_fingerprint(models, GLIGEN, "gligen_name")

    @node("GLIGENLoader", display_name="GLIGENLoader", category="loaders", compat=COMPAT, fingerprint=fingerprint)
    def gligen_loader(
        gligen_name: model_choice(models, *GLIGEN, tooltip="a GLIGEN file in models/gligen/"),
    ) -> Out(GLIGEN="GLIGEN"):
        """Load a GLIGEN model (the position net and the fusers of an SD 1.x UNet)."""
        from sgm.io.state_dict import read_state_dict
        from sgm.nets.gligen import load_gligen

        path = runtime.resolve_model(GLIGEN, gligen_name, "GLIGENLoader", "gligen_name")
        return runtime.load_model(path, "gligen", "GLIGENLoader",
                                  lambda dtype: load_gligen(read_state_dict(path)[0]).to(dtype), prepare=False)

    @node("GLIGENTextBoxApply", display_name="GLIGENTextBoxApply", category="conditioning/gligen", compat=COMPAT)
    def gligen_textbox_apply(
        conditioning_to: "CONDITIONING",
        clip: "CLIP",
        gligen_textbox_model: "GLIGEN",
        text: Text(multiline=True, dynamic_prompts=True),
        width: Int(default=64, **BOX),
        height: Int(default=64, **BOX),
        x: Int(default=0, min=0, max=16384, step=8),
        y: Int(default=0, min=0, max=16384, step=8),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Ground ``text`` in the box (x, y, width, height; image pixels) of each condition: the phrase's pooled
        text embedding and the box become a grounding token that the model's fusers attend to. Several boxes
        (chained nodes) add up, at most 30; every box needs the same GLIGEN model."""
        from sgm.nets.gligen import GroundingBox

        _, pooled = encode_prompt(runtime, clip, text, "GLIGENTextBoxApply", force_pooled=True)
        if pooled is None:
            raise ValueError(f"GLIGENTextBoxApply: the CLIP input ({getattr(clip, 'family', '?')}) gives no pooled "
                             "text embedding; GLIGEN needs an SD 1.x CLIP text encoder")
        box = GroundingBox(pooled, height=height // LATENT_FACTOR, width=width // LATENT_FACTOR,
                           y=y // LATENT_FACTOR, x=x // LATENT_FACTOR)
        out = []
        for cond in conditioning_to:
            model, boxes = cond.gligen if cond.gligen is not None else (gligen_textbox_model, ())
            if model is not gligen_textbox_model:
                raise ValueError("GLIGENTextBoxApply: this conditioning already has boxes of another GLIGEN model; "
                                 "use one GLIGEN model for all boxes of a prompt")
            out.append(cond.with_(gligen=(model, (*boxes, box))))
        return out

    return [gligen_loader, gligen_textbox_apply]
