"""ComfyUI's CLIP vision nodes: load an image tower, encode an image, condition on it (unCLIP and
SDXL Revision), and the unCLIP checkpoint loader.

The numeric work is in ``sgm.nets.clip_vision`` (the tower, ComfyUI's preprocessing),
``sgm.io.clip_vision_files`` (both file layouts) and ``sgm.sampling.unclip`` (the noise
augmentation); ``unCLIPConditioning`` only records the embeddings on each condition
(``Condition.unclip``), which sampling turns into the UNet's vector: an SD 2.1 unCLIP
model's ``y``, or SDXL's pooled text replaced (Revision).
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.api import Choice, Float, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT, call
from nodes.loaders import CHECKPOINTS
from nodes.runtime import Runtime, model_file_fingerprint

CLIP_VISION = ("clip_vision",)
CROPS = ("center", "none")


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    fingerprint = model_file_fingerprint(models, CLIP_VISION, "clip_name")

    @node("CLIPVisionLoader", display_name="Load CLIP Vision", category="loaders", compat=COMPAT,
          fingerprint=fingerprint)
    def clip_vision_loader(
        clip_name: model_choice(models, *CLIP_VISION, tooltip="a CLIP vision file in models/clip_vision/ "
                                                             "(transformers or open_clip layout)"),
    ) -> Out(CLIP_VISION="CLIP_VISION"):
        """Load a CLIP image encoder (ViT-L/14, ViT-H/14 or ViT-bigG/14; the size is read from the file)."""
        from sgm.io.clip_vision_files import load_clip_vision

        path = runtime.resolve_model(CLIP_VISION, clip_name, "CLIPVisionLoader", "clip_name")
        return runtime.load_model(path, "clip_vision", "CLIPVisionLoader",
                                  lambda dtype: load_clip_vision(path, device="cpu", dtype=dtype))

    @node("CLIPVisionEncode", display_name="CLIP Vision Encode", category="conditioning", compat=COMPAT)
    def clip_vision_encode(
        clip_vision: "CLIP_VISION",
        image: "IMAGE",
        crop: Choice(choices=CROPS, tooltip="center: shortest side to 224 and the centre cut out; none: the whole "
                                            "image squeezed to 224x224"),
    ) -> Out(CLIP_VISION_OUTPUT="CLIP_VISION_OUTPUT"):
        """Encode an image with a CLIP image encoder: its projected embedding and hidden states."""
        from sgm.nets.clip_vision import encode_image

        if clip_vision is None:
            raise ValueError("CLIPVisionEncode: clip_vision is empty: the unCLIP checkpoint it came from holds no "
                             "image encoder (embedder.model.visual.*); load one with CLIPVisionLoader instead")

        def work() -> Any:
            with runtime.models.use(clip_vision) as device:
                return encode_image(clip_vision, image, crop, device)

        return runtime.models.retry_on_oom(work, "CLIPVisionEncode")

    @node("unCLIPConditioning", display_name="unCLIPConditioning", category="conditioning", compat=COMPAT)
    def unclip_conditioning(
        conditioning: "CONDITIONING",
        clip_vision_output: "CLIP_VISION_OUTPUT",
        strength: Float(min=-10.0, max=10.0, step=0.01, tooltip="weight of this image's embedding") = 1.0,
        noise_augmentation: Float(min=0.0, max=1.0, step=0.01,
                                  tooltip="noise added to the embedding: more gives looser variations") = 0.0,
    ) -> Out(CONDITIONING="CONDITIONING"):
        """Condition on an image's CLIP embedding: for SD 2.1 unCLIP models (the image variation input) and
        SDXL (Revision: the embedding replaces the pooled text). Chained nodes add up, weighted by strength."""
        if strength == 0:
            return conditioning
        entry = (clip_vision_output.image_embeds, float(strength), float(noise_augmentation))
        return [cond.with_(unclip=(*cond.unclip, entry)) for cond in conditioning]

    @node("unCLIPCheckpointLoader", display_name="unCLIPCheckpointLoader", category="loaders", compat=COMPAT,
          fingerprint=ours["LoadCheckpoint"].fingerprint)
    def unclip_checkpoint_loader(
        ckpt_name: ours["LoadCheckpoint"].input("ckpt_name").widget,
    ) -> Out(MODEL="MODEL", CLIP="CLIP", VAE="VAE", CLIP_VISION="CLIP_VISION"):
        """Load an SD 2.1 unCLIP checkpoint: model, text encoder and VAE (as Load Checkpoint) plus the image
        encoder stored with them (none where the file has no embedder.model.visual.* weights)."""
        from sgm.io.clip_vision_files import build_clip_vision, clip_vision_hints, has_clip_vision
        from sgm.io.state_dict import read_state_dict

        model, clip, vae = call(ours, "LoadCheckpoint", ckpt_name=ckpt_name)
        path = runtime.resolve_model(CHECKPOINTS, ckpt_name, "unCLIPCheckpointLoader", "ckpt_name")

        def build(dtype: Any) -> Any:
            state_dict, metadata = read_state_dict(path)
            if not has_clip_vision(state_dict):
                return None
            return build_clip_vision(state_dict, hints=clip_vision_hints(metadata), dtype=dtype,
                                     what=f"unCLIPCheckpointLoader: {ckpt_name} image encoder")

        clip_vision = runtime.load_model(path, "clip_vision", "unCLIPCheckpointLoader", build)
        return model, clip, vae, clip_vision

    return [clip_vision_loader, clip_vision_encode, unclip_conditioning, unclip_checkpoint_loader]
