"""MODEL, CLIP and VAE as a pack sees them: objects with the commonly used calls of ComfyUI's
ModelPatcher, CLIP and VAE, over our frozen values (``nodes.values``).

What needs ComfyUI's internals (its BaseModel, weight-patch format, sampler hooks) raises
:class:`NotSupportedError` naming the call and the internal it needs; nothing is accepted
and silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_packs.state import call_ours


class NotSupportedError(RuntimeError):
    """A pack used something of ComfyUI that is not offered here."""

    def __init__(self, what: str, internal: str, instead: str = "") -> None:
        message = f"not supported: {what} needs ComfyUI's internal {internal}"
        super().__init__(message + (f"; {instead}" if instead else ""))


class NotSupportedAttribute(NotSupportedError, AttributeError):
    """An attribute of a shim object that needs ComfyUI's internals (``hasattr`` sees False)."""


def _default_options() -> dict[str, Any]:
    return {"transformer_options": {}}


class ComfyModel:
    """MODEL: ``clone``, ``model_options``, ``is_clone``, ``model_size``; the value is
    :class:`nodes.values.ModelValue` (``.value``). Options a pack sets are checked when the
    model leaves the pack: our samplers honour none of ComfyUI's, so any is refused there."""

    def __init__(self, value: Any, model_options: dict[str, Any] | None = None) -> None:
        self.value = value
        self.model_options = model_options if model_options is not None else _default_options()
        self.load_device, self.offload_device = _devices()

    def clone(self) -> "ComfyModel":
        options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        return ComfyModel(self.value, options)

    def is_clone(self, other: Any) -> bool:
        return isinstance(other, ComfyModel) and other.value is self.value

    def model_size(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.value.unet.parameters())

    def model_dtype(self) -> Any:
        return next(self.value.unet.parameters()).dtype

    def add_patches(self, patches: Any, strength_patch: float = 1.0, strength_model: float = 1.0) -> Any:
        raise NotSupportedError("MODEL.add_patches", "weight-patch format (comfy.lora)",
                                "apply LoRAs with LoraLoader / LoraLoaderModelOnly")

    def get_model_object(self, name: str) -> Any:
        raise NotSupportedError(f"MODEL.get_model_object({name!r})", "BaseModel")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith("set_model_") or name.startswith("add_"):
            raise NotSupportedAttribute(f"MODEL.{name}", "ModelPatcher sampling hooks (our samplers take none)")
        raise NotSupportedAttribute(f"MODEL.{name}", "ModelPatcher / BaseModel")

    def to_value(self, where: str) -> Any:
        if self.model_options != _default_options():
            changed = sorted(k for k, v in self.model_options.items() if _default_options().get(k) != v)
            raise NotSupportedError(f"{where}: a MODEL with model_options {changed}",
                                    "sampling hooks (our samplers honour no model_options)")
        return self.value


@dataclass(frozen=True)
class Tokens:
    """What ``CLIP.tokenize`` returns here: the prompt, tokenized when it is encoded."""

    text: str


class ComfyClip:
    """CLIP: ``clone``, ``tokenize``, ``encode_from_tokens(_scheduled)``, ``encode``,
    ``clip_layer``; the value is :class:`nodes.values.ClipValue` (``.value``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def clone(self) -> "ComfyClip":
        return ComfyClip(self.value)

    def tokenize(self, text: str, return_word_ids: bool = False, **_: Any) -> Tokens:
        if return_word_ids:
            raise NotSupportedError("CLIP.tokenize(return_word_ids=True)", "tokenizers")
        return Tokens(str(text))

    def _encode(self, tokens: Any) -> Any:
        if not isinstance(tokens, Tokens):
            raise NotSupportedError("CLIP.encode_from_tokens with tokens not made by CLIP.tokenize", "tokenizers")
        conditions = call_ours("CLIPTextEncode", clip=self.value, text=tokens.text)
        return conditions[0]

    def encode_from_tokens(self, tokens: Any, return_pooled: bool = False, return_dict: bool = False) -> Any:
        condition = self._encode(tokens)
        if return_dict:
            return {"cond": condition.context, "pooled_output": condition.pooled}
        return (condition.context, condition.pooled) if return_pooled else condition.context

    def encode_from_tokens_scheduled(self, tokens: Any, unprojected: bool = False,
                                     add_dict: dict[str, Any] | None = None, show_pbar: bool = True) -> Any:
        from comfy_packs.values import conditioning_to_comfy

        condition = self._encode(tokens)
        comfy = conditioning_to_comfy([condition])
        if add_dict:
            comfy[0][1].update(add_dict)
        return comfy

    def encode(self, text: str) -> Any:
        return self.encode_from_tokens(self.tokenize(text))

    def clip_layer(self, layer_idx: int) -> None:
        # ComfyUI mutates the (cloned) CLIP in place; so does this wrapper, never the shared value.
        self.value = call_ours("CLIPSetLastLayer", clip=self.value, stop_at_clip_layer=layer_idx)

    def add_patches(self, patches: Any, strength_patch: float = 1.0, strength_model: float = 1.0) -> Any:
        raise NotSupportedError("CLIP.add_patches", "weight-patch format (comfy.lora)", "use LoraLoader")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotSupportedAttribute(f"CLIP.{name}", "CLIP internals (cond_stage_model, patcher)")


class ComfyVae:
    """VAE: ``encode`` / ``decode`` (and tiled), ``downscale_ratio``; the value is
    :class:`nodes.values.VaeValue` (``.value``). Latents are ours: scaled by the VAE's factor,
    so a pack's encode -> latent math -> our sampler stays consistent."""

    def __init__(self, value: Any) -> None:
        self.value = value

    @property
    def downscale_ratio(self) -> int:
        return self.value.downscale

    upscale_ratio = downscale_ratio

    @property
    def latent_channels(self) -> int:
        return int(getattr(self.value.vae, "latent_channels", 4))

    def spacial_compression_decode(self) -> int:
        return self.value.downscale

    def spacial_compression_encode(self) -> int:
        return self.value.downscale

    def decode(self, samples: Any) -> Any:  # (B, C, h, w) -> (B, H, W, 3)
        from nodes.values import LatentValue

        return call_ours("Decode", vae=self.value, latent=LatentValue(samples))

    def decode_tiled(self, samples: Any, tile_x: int = 64, tile_y: int = 64, overlap: int = 16, **_: Any) -> Any:
        from nodes.values import LatentValue

        f = self.value.downscale
        return call_ours("VAEDecodeTiled", samples=LatentValue(samples), vae=self.value, tile_size=max(tile_x, tile_y) * f,
                         overlap=overlap * f, temporal_size=64, temporal_overlap=8)

    def encode(self, pixels: Any) -> Any:  # (B, H, W, C) -> (B, 4, H/8, W/8)
        return call_ours("EncodeLatent", vae=self.value, image=pixels[..., :3]).samples

    def encode_tiled(self, pixels: Any, tile_x: int = 512, tile_y: int = 512, overlap: int = 64, **_: Any) -> Any:
        return call_ours("VAEEncodeTiled", pixels=pixels[..., :3], vae=self.value, tile_size=max(tile_x, tile_y),
                         overlap=overlap, temporal_size=64, temporal_overlap=8).samples

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotSupportedAttribute(f"VAE.{name}", "VAE internals (first_stage_model, patcher)")


def _devices() -> tuple[Any, Any]:
    from comfy_packs.runtime import get_torch_device

    return get_torch_device(), _cpu()


def _cpu() -> Any:
    import torch

    return torch.device("cpu")

