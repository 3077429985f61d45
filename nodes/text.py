"""Text conditioning nodes: prompts -> CONDITIONING (a list of ``sgm.text.conditioning.Condition``).

Prompt weighting (``(word:1.2)``), long prompts and ``embedding:name`` are handled by the
text conditioner (``sgm.text.encoders``). LoRA patches recorded on CLIP are applied only
while encoding.
"""

from dataclasses import replace
from typing import Any

from engine.api import Float, Int, NodeSpec, Out, Text, node
from nodes.runtime import Runtime
from nodes.values import ClipValue


def encode_prompt(runtime: Runtime, clip: ClipValue, text: str, node_id: str,
                  force_pooled: bool = False) -> tuple[Any, Any]:
    """(context (1, T, C), pooled (1, P) or None) for one prompt, LoRA patches applied;
    ``force_pooled``: a pooled output even where the family's conditioning has none."""
    if clip is None or clip.conditioner is None:
        raise ValueError(
            f"{node_id}: the CLIP input carries no text encoder (the checkpoint {getattr(clip, 'name', '?')!r} "
            "has none); load one with LoadTextEncoder and link it here")
    import torch

    from sgm.io.lora import patched

    towers = clip.towers()
    modules = {f"te{i}": tower for i, tower in enumerate(towers)}
    kwargs: dict[str, Any] = {}
    if clip.clip_skip is not None:
        kwargs["clip_skip"] = clip.clip_skip
    if clip.embeddings_dir is not None and "embedding:" in text:
        kwargs["embeddings_dir"] = clip.embeddings_dir
    if force_pooled:
        kwargs["force_pooled"] = True

    def work() -> tuple[Any, Any]:
        with runtime.models.use(*towers), patched(modules, [(p.targets, p.strength) for p in clip.loras]):
            with torch.no_grad():
                context, pooled = clip.conditioner.encode_text([text], **kwargs)
        return context.detach().float().cpu(), None if pooled is None else pooled.detach().float().cpu()

    return runtime.models.retry_on_oom(work, f"{node_id} (encoding the prompt)")


def encode_prompt_pair(runtime: Runtime, clip: ClipValue, text_l: str, text_g: str, node_id: str) -> tuple[Any, Any]:
    """SDXL with a prompt per text tower: the context's CLIP-L channels from ``text_l``, its
    OpenCLIP bigG channels and the pooled embedding from ``text_g``; the shorter prompt is
    padded with empty-prompt windows (77 tokens each) to the longer one's length."""
    import torch

    towers = clip.towers() if clip is not None else []
    if len(towers) != 2:
        raise ValueError(f"{node_id}: a separate text_l and text_g need SDXL's two text encoders; this CLIP "
                         f"({getattr(clip, 'family', '?')}) has {len(towers)}; give both the same prompt")
    context_l, _ = encode_prompt(runtime, clip, text_l, node_id)
    context_g, pooled = encode_prompt(runtime, clip, text_g, node_id)
    if context_l.shape[1] != context_g.shape[1]:
        empty, _ = encode_prompt(runtime, clip, "", node_id)  # (1, 77, C)

        def padded(context: Any, length: int) -> Any:
            repeats = (length - context.shape[1]) // empty.shape[1]
            return torch.cat([context, empty.repeat(1, repeats, 1)], dim=1) if repeats else context

        length = max(context_l.shape[1], context_g.shape[1])
        context_l, context_g = padded(context_l, length), padded(context_g, length)
    width_l = int(towers[0].config.width)
    return torch.cat([context_l[..., :width_l], context_g[..., width_l:]], dim=-1), pooled


def nodes(runtime: Runtime) -> list[NodeSpec]:
    @node("TextEncode", display_name="Text Encode (Prompt)", category="conditioning")
    def text_encode(
        clip: "CLIP",
        text: Text(multiline=True,
                   tooltip="the prompt; (word:1.2) weights words, embedding:name uses an embedding") = "",
    ) -> Out(conditioning="CONDITIONING"):
        """Encode a prompt with the model's text encoder into conditioning for the sampler."""
        from sgm.text.conditioning import Condition

        context, pooled = encode_prompt(runtime, clip, text, "TextEncode")
        return [Condition(context=context, pooled=pooled, extra={"prompt": text})]

    @node("TextEncodeSDXL", display_name="Text Encode SDXL", category="conditioning")
    def text_encode_sdxl(
        clip: "CLIP",
        text: Text(multiline=True) = "",
        width: Int(min=0, max=16384, step=8, tooltip="original image width the model is told") = 1024,
        height: Int(min=0, max=16384, step=8, tooltip="original image height the model is told") = 1024,
        crop_w: Int(min=0, max=16384, step=8, tooltip="crop left (pixels)") = 0,
        crop_h: Int(min=0, max=16384, step=8, tooltip="crop top (pixels)") = 0,
        target_width: Int(min=0, max=16384, step=8) = 1024,
        target_height: Int(min=0, max=16384, step=8) = 1024,
        aesthetic_score: Float(min=0.0, max=1000.0, step=0.01,
                               tooltip="refiner only: 6 for positive, 2.5 for negative prompts") = 6.0,
    ) -> Out(conditioning="CONDITIONING"):
        """Encode a prompt for SDXL with its size and crop conditioning (SDXL paper, sec. 2.2);
        the refiner uses the aesthetic score instead of the target size."""
        from sgm.text.conditioning import Condition
        from sgm.text.sdxl_conditioning import sdxl_refiner_vector, sdxl_vector

        context, pooled = encode_prompt(runtime, clip, text, "TextEncodeSDXL")
        if pooled is None:
            raise ValueError(f"TextEncodeSDXL: the {clip.family} text encoder gives no pooled embedding; "
                             "use TextEncode for non-SDXL models")
        if clip.family.startswith("sdxl-refiner"):
            y = sdxl_refiner_vector(pooled, original_size=(height, width), crop_top_left=(crop_h, crop_w),
                                    aesthetic_score=aesthetic_score)
        else:
            y = sdxl_vector(pooled, original_size=(height, width), crop_top_left=(crop_h, crop_w),
                            target_size=(target_height, target_width))
        return [Condition(context=context, pooled=pooled, y=y, extra={"prompt": text})]

    return [text_encode, text_encode_sdxl, *conditioning_nodes()]


def conditioning_nodes() -> list[NodeSpec]:
    @node("CombineConditioning", display_name="Combine Conditioning", category="conditioning")
    def combine(conditioning_1: "CONDITIONING", conditioning_2: "CONDITIONING") -> Out(conditioning="CONDITIONING"):
        """Use both conditionings: the sampler averages their predictions (areas weighted)."""
        return [*conditioning_1, *conditioning_2]

    @node("ConditioningAverage", display_name="Conditioning (Average)", category="conditioning")
    def average(
        conditioning_to: "CONDITIONING",
        conditioning_from: "CONDITIONING",
        conditioning_to_strength: Float(min=0.0, max=1.0, step=0.01) = 1.0,
    ) -> Out(conditioning="CONDITIONING"):
        """Blend the text embeddings: to * strength + from * (1 - strength) (the first
        'from' condition is mixed into every 'to' condition)."""
        if not conditioning_from:
            raise ValueError("ConditioningAverage: conditioning_from is empty; link a TextEncode output")
        source = conditioning_from[0]
        s = float(conditioning_to_strength)
        out = []
        for cond in conditioning_to:
            other = _match_length(source.context, cond.context.shape[1])
            pooled = cond.pooled
            if pooled is not None and source.pooled is not None:
                pooled = pooled * s + source.pooled * (1 - s)
            out.append(replace(cond, context=cond.context * s + other * (1 - s), pooled=pooled))
        return out

    @node("ZeroConditioning", display_name="Zero Conditioning", category="conditioning")
    def zero_out(conditioning: "CONDITIONING") -> Out(conditioning="CONDITIONING"):
        """All-zero text embeddings (keeps SDXL size conditioning): a neutral negative."""
        import torch

        out = []
        for cond in conditioning:
            pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
            y = cond.y
            if y is not None and cond.pooled is not None:
                y = torch.cat([torch.zeros_like(cond.pooled), y[:, cond.pooled.shape[1]:]], dim=1)
            out.append(replace(cond, context=torch.zeros_like(cond.context), pooled=pooled, y=y))
        return out

    @node("SetConditioningArea", display_name="Set Conditioning Area", category="conditioning")
    def set_area(
        conditioning: "CONDITIONING",
        width: Int(min=8, max=16384, step=8, tooltip="area width in pixels") = 64,
        height: Int(min=8, max=16384, step=8, tooltip="area height in pixels") = 64,
        x: Int(min=0, max=16384, step=8, tooltip="left edge in pixels") = 0,
        y: Int(min=0, max=16384, step=8, tooltip="top edge in pixels") = 0,
        strength: Float(min=0.0, max=10.0, step=0.01) = 1.0,
    ) -> Out(conditioning="CONDITIONING"):
        """Restrict the conditioning to a rectangle of the image (combine it with a full-frame
        prompt); strength weights it against overlapping conditions."""
        from sgm.text.conditioning import Area

        area = Area(x=x // 8, y=y // 8, width=max(1, width // 8), height=max(1, height // 8))
        return [replace(cond, area=area, strength=float(strength)) for cond in conditioning]

    return [combine, average, zero_out, set_area]


def _match_length(context: Any, length: int) -> Any:
    """(B, T, C) -> (B, length, C): truncated, or padded by repeating its last 77-token window."""
    import torch

    if context.shape[1] >= length:
        return context[:, :length]
    window = context[:, -77:] if context.shape[1] >= 77 else context
    repeats = -(-(length - context.shape[1]) // window.shape[1])
    return torch.cat([context, window.repeat(1, repeats, 1)], dim=1)[:, :length]
