"""ComfyUI's text encoding and conditioning nodes, over ours (``nodes.text``)."""

from __future__ import annotations

from typing import Mapping

from engine.api import Choice, Float, Int, NodeSpec, Out, Text, node
from nodes.comfy import COMPAT, call
from nodes.runtime import Runtime
from nodes.text import encode_prompt_pair

SIZE = dict(min=0, max=16384)
LATENT_FACTOR = 8  # image pixels per latent pixel (as ComfyUI's area and mask nodes assume)


def prompt() -> Text:
    return Text(multiline=True, dynamic_prompts=True)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("CLIPTextEncode", display_name="CLIP Text Encode (Prompt)", category="conditioning", compat=COMPAT)
    def clip_text_encode(text: prompt(), clip: "CLIP") -> Out(CONDITIONING="CONDITIONING"):
        """Encode a prompt with the model's text encoder (latentflow's TextEncode)."""
        return call(ours, "TextEncode", clip=clip, text=text)

    @node("CLIPTextEncodeSDXL", display_name="CLIPTextEncodeSDXL", category="advanced/conditioning", compat=COMPAT)
    def clip_text_encode_sdxl(
        clip: "CLIP",
        width: Int(default=1024, **SIZE),
        height: Int(default=1024, **SIZE),
        crop_w: Int(default=0, **SIZE),
        crop_h: Int(default=0, **SIZE),
        target_width: Int(default=1024, **SIZE),
        target_height: Int(default=1024, **SIZE),
        text_g: prompt(),
        text_l: prompt(),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """SDXL conditioning with a prompt per text encoder: text_l for CLIP-L, text_g for
        OpenCLIP bigG (which also gives the pooled embedding), plus the size and crop vector."""
        from sgm.text.conditioning import Condition
        from sgm.text.sdxl_conditioning import sdxl_vector

        if text_g == text_l:  # one prompt for both towers: exactly our TextEncodeSDXL
            return call(ours, "TextEncodeSDXL", clip=clip, text=text_g, width=width, height=height, crop_w=crop_w,
                        crop_h=crop_h, target_width=target_width, target_height=target_height)
        context, pooled = encode_prompt_pair(runtime, clip, text_l, text_g, "CLIPTextEncodeSDXL")
        y = sdxl_vector(pooled, original_size=(height, width), crop_top_left=(crop_h, crop_w),
                        target_size=(target_height, target_width))
        return [Condition(context=context, pooled=pooled, y=y, extra={"prompt": text_g, "prompt_l": text_l})]

    @node("CLIPTextEncodeSDXLRefiner", display_name="CLIPTextEncodeSDXLRefiner", category="advanced/conditioning",
          compat=COMPAT)
    def clip_text_encode_sdxl_refiner(
        ascore: Float(default=6.0, min=0.0, max=1000.0, step=0.01),
        width: Int(default=1024, **SIZE),
        height: Int(default=1024, **SIZE),
        text: prompt(),
        clip: "CLIP",
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Encode a prompt for the SDXL refiner, with the aesthetic score (latentflow's TextEncodeSDXL)."""
        if not str(getattr(clip, "family", "")).startswith("sdxl-refiner"):
            raise ValueError(f"CLIPTextEncodeSDXLRefiner: the CLIP input is a {getattr(clip, 'family', '?')} text "
                             "encoder, not the SDXL refiner's; use CLIPTextEncodeSDXL or CLIPTextEncode for it")
        return call(ours, "TextEncodeSDXL", clip=clip, text=text, width=width, height=height,
                    aesthetic_score=ascore)

    @node("ConditioningCombine", display_name="Conditioning (Combine)", category="conditioning", compat=COMPAT)
    def conditioning_combine(conditioning_1: "CONDITIONING",
                             conditioning_2: "CONDITIONING") -> Out(CONDITIONING="CONDITIONING"):
        """Use both conditionings; the sampler averages their predictions (latentflow's CombineConditioning)."""
        return call(ours, "CombineConditioning", conditioning_1=conditioning_1, conditioning_2=conditioning_2)

    @node("ConditioningSetArea", display_name="Conditioning (Set Area)", category="conditioning", compat=COMPAT)
    def conditioning_set_area(
        conditioning: "CONDITIONING",
        width: Int(default=64, min=64, max=16384, step=8),
        height: Int(default=64, min=64, max=16384, step=8),
        x: Int(default=0, min=0, max=16384, step=8),
        y: Int(default=0, min=0, max=16384, step=8),
        strength: Float(default=1.0, min=0.0, max=10.0, step=0.01),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Restrict the conditioning to a rectangle in pixels (latentflow's SetConditioningArea)."""
        return call(ours, "SetConditioningArea", conditioning=conditioning, width=width, height=height, x=x, y=y,
                    strength=strength)

    @node("ConditioningSetAreaPercentage", display_name="Conditioning (Set Area with Percentage)",
          category="conditioning", compat=COMPAT)
    def conditioning_set_area_percentage(
        conditioning: "CONDITIONING",
        width: Float(default=1.0, min=0, max=1.0, step=0.01),
        height: Float(default=1.0, min=0, max=1.0, step=0.01),
        x: Float(default=0, min=0, max=1.0, step=0.01),
        y: Float(default=0, min=0, max=1.0, step=0.01),
        strength: Float(default=1.0, min=0.0, max=10.0, step=0.01),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Restrict the conditioning to a rectangle given as fractions of the image (1 = the whole width or
        height); it is turned into latent pixels when sampling starts (``sgm.sampling.area_fraction``)."""
        from sgm.sampling.area_fraction import AreaFraction

        try:
            area = AreaFraction(float(x), float(y), float(width), float(height))
        except ValueError as error:
            raise ValueError(f"ConditioningSetAreaPercentage: {error}") from error
        return [c.with_(area=area, strength=float(strength)) for c in conditioning]

    @node("ConditioningSetAreaStrength", display_name="ConditioningSetAreaStrength", category="conditioning",
          compat=COMPAT)
    def conditioning_set_area_strength(
        conditioning: "CONDITIONING",
        strength: Float(default=1.0, min=0.0, max=10.0, step=0.01),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Set the conditioning's weight where it overlaps others (areas, masks): the sampler averages the
        overlapping predictions weighted by their strengths."""
        return [c.with_(strength=float(strength)) for c in conditioning]

    @node("ConditioningZeroOut", display_name="ConditioningZeroOut", category="advanced/conditioning",
          compat=COMPAT)
    def conditioning_zero_out(conditioning: "CONDITIONING") -> Out(CONDITIONING="CONDITIONING"):
        """All-zero text embeddings: a neutral negative (latentflow's ZeroConditioning)."""
        return call(ours, "ZeroConditioning", conditioning=conditioning)

    @node("ConditioningSetMask", display_name="Conditioning (Set Mask)", category="conditioning", compat=COMPAT)
    def conditioning_set_mask(
        conditioning: "CONDITIONING",
        mask: "MASK",
        strength: Float(default=1.0, min=0.0, max=10.0, step=0.01),
        set_cond_area: Choice(choices=("default", "mask bounds")),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Restrict the conditioning to a mask (image pixels, 1 = applies) with a strength; "mask bounds" also
        runs the model only on the mask's bounding box (in latent pixels: image pixels / 8)."""
        from sgm.data.image_ops import as_mask_batch, mask_bounds
        from sgm.text.conditioning import Area

        mask = as_mask_batch(mask).float()
        area = None
        if set_cond_area == "mask bounds":
            bounds = mask_bounds(mask)
            if bounds is None:
                raise ValueError("ConditioningSetMask: set_cond_area 'mask bounds' needs a mask with some "
                                 "non-zero pixel; this one is all zero")
            x, y, w, h = bounds
            x0, y0 = x // LATENT_FACTOR, y // LATENT_FACTOR
            x1, y1 = -(-(x + w) // LATENT_FACTOR), -(-(y + h) // LATENT_FACTOR)  # round the far edge up
            area = Area(x0, y0, x1 - x0, y1 - y0)
        return [c.with_(mask=mask, strength=float(strength), **({"area": area} if area else {}))
                for c in conditioning]

    @node("ConditioningConcat", display_name="Conditioning (Concat)", category="conditioning", compat=COMPAT)
    def conditioning_concat(conditioning_to: "CONDITIONING",
                            conditioning_from: "CONDITIONING") -> Out(CONDITIONING="CONDITIONING"):
        """Append the first conditioning_from's text tokens to each of conditioning_to (one longer prompt whose
        parts were encoded apart); the pooled embedding stays conditioning_to's."""
        import torch

        if not conditioning_from:
            return list(conditioning_to)
        extra = conditioning_from[0].context
        out = []
        for cond in conditioning_to:
            if extra.shape[-1] != cond.context.shape[-1]:
                raise ValueError(f"ConditioningConcat: conditioning_from has {extra.shape[-1]} features per token, "
                                 f"conditioning_to {cond.context.shape[-1]}; encode both with the same text encoder")
            tail = extra if extra.shape[0] == cond.context.shape[0] else extra.expand(cond.context.shape[0], -1, -1)
            out.append(cond.with_(context=torch.cat([cond.context, tail], dim=1)))
        return out

    @node("ConditioningSetTimestepRange", display_name="ConditioningSetTimestepRange",
          category="advanced/conditioning", compat=COMPAT)
    def conditioning_set_timestep_range(
        conditioning: "CONDITIONING",
        start: Float(default=0.0, min=0.0, max=1.0, step=0.001),
        end: Float(default=1.0, min=0.0, max=1.0, step=0.001),
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Apply the conditioning only from start to end of the sampling (fractions of the model's timesteps,
        0 = pure noise, 1 = clean)."""
        from sgm.sampling.guidance_extra import RANGE_KEY

        return [c.with_(extra={**c.extra, RANGE_KEY: (float(start), float(end))}) for c in conditioning]

    return [clip_text_encode, clip_text_encode_sdxl, clip_text_encode_sdxl_refiner, conditioning_combine,
            conditioning_set_area, conditioning_set_area_percentage, conditioning_set_area_strength,
            conditioning_zero_out, conditioning_set_mask, conditioning_concat,
            conditioning_set_timestep_range]
