"""Text-encoder key mapping: diffusers/transformers ``text_encoder(_2)`` <-> single-file keys.

Layouts (``te`` = a transformers ``CLIPTextModel(WithProjection)`` state dict):

=============  ===========================================  ===========================================
family         text_encoder (te1)                           text_encoder_2 (te2)
=============  ===========================================  ===========================================
sd1            ``cond_stage_model.transformer.`` + te key   --
sd2            ``cond_stage_model.model.*`` (OpenCLIP)      --
sdxl           ``conditioner.embedders.0.transformer.``     ``conditioner.embedders.1.model.*``
sdxl-refiner   --                                           ``conditioner.embedders.0.model.*``
=============  ===========================================  ===========================================

The SD 2.x trap: diffusers' SD 2.x text encoder has one layer fewer than the released
OpenCLIP ViT-H (23 of 24), because SD 2.x conditions on the penultimate layer and
diffusers dropped the unused last one, making its final layer the penultimate. To keep
the conditioning identical, diffusers -> original appends an *identity* resblock (all
weights zero: both residual branches then add exactly zero), so the file has the released
layout and its penultimate output is diffusers' last one; original -> diffusers drops the
last resblock again. The OpenCLIP ``logit_scale`` (a contrastive-training temperature that
no text encoding uses) has no diffusers counterpart and is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sgm.text.encoders import base_family

Tensors = Mapping[str, torch.Tensor]

_HF = "text_model."
_HF_LAYER = "text_model.encoder.layers."
_OC = "model."
_OC_LAYER = "model.transformer.resblocks."

# Per-layer renames HF -> OpenCLIP (q/k/v are packed separately).
_LAYER_RENAMES = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_DROPPED_ORIGINAL = ("model.logit_scale",)


def text_prefixes(family: str) -> tuple[str | None, str | None]:
    """Single-file prefixes of (text_encoder, text_encoder_2) for a family."""
    base = base_family(family)
    table: dict[str, tuple[str | None, str | None]] = {
        "sd1": ("cond_stage_model.", None),
        "sd2": ("cond_stage_model.", None),
        "sdxl": ("conditioner.embedders.0.", "conditioner.embedders.1."),
        "sdxl-refiner": (None, "conditioner.embedders.0."),
    }
    if base not in table:
        raise ValueError(
            f"no text-encoder key layout for family {family!r}; known: sd1, sd2, sd2-v, sdxl, "
            "sdxl-refiner and their -inpaint variants"
        )
    return table[base]


def with_text_model_prefix(te: Tensors) -> dict[str, torch.Tensor]:
    """transformers CLIP text keys in their on-disk form (``text_model.*``).

    transformers >= 5 keeps a bare ``CLIPTextModel``'s parameters without the
    ``text_model.`` prefix in memory (its loader adds/removes it); files and
    ``CLIPTextModelWithProjection`` carry it. We accept both and always write the prefix.
    """
    bare = ("embeddings.", "encoder.", "final_layer_norm.")
    return {(_HF + k if k.startswith(bare) else k): v for k, v in te.items()}


def hf_to_open_clip(te: Tensors, *, add_identity_layer: bool = False) -> dict[str, torch.Tensor]:
    """transformers CLIP text keys -> OpenCLIP ``model.*`` keys (no outer prefix)."""
    te = with_text_model_prefix(te)
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(k[len(_HF_LAYER) :].split(".", 1)[0]) for k in te if k.startswith(_HF_LAYER)})
    for key, value in te.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["model.token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["model.positional_embedding"] = value
        elif key == "text_model.embeddings.position_ids":
            continue  # a derived buffer; OpenCLIP has none
        elif key.startswith("text_model.final_layer_norm."):
            out["model.ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["model.text_projection"] = value.t().contiguous()  # (P, C) -> (C, P)
        elif key.startswith(_HF_LAYER):
            index, rest = key[len(_HF_LAYER) :].split(".", 1)
            if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                continue  # packed below
            for hf_name, oc_name in _LAYER_RENAMES.items():
                if rest.startswith(hf_name):
                    out[f"{_OC_LAYER}{index}.{oc_name}{rest[len(hf_name):]}"] = value
                    break
            else:
                raise KeyError(f"unknown transformers CLIP layer key {key!r}")
        else:
            raise KeyError(
                f"unknown transformers CLIP text key {key!r}; expected a CLIPTextModel or "
                "CLIPTextModelWithProjection state dict"
            )
    for index in layers:
        p = f"{_HF_LAYER}{index}.self_attn."
        for kind in ("weight", "bias"):
            out[f"{_OC_LAYER}{index}.attn.in_proj_{kind}"] = torch.cat(
                [te[f"{p}q_proj.{kind}"], te[f"{p}k_proj.{kind}"], te[f"{p}v_proj.{kind}"]]
            )
    if add_identity_layer:
        new = len(layers)
        for key in [k for k in out if k.startswith(f"{_OC_LAYER}{layers[-1]}.")]:
            rest = key[len(f"{_OC_LAYER}{layers[-1]}.") :]
            out[f"{_OC_LAYER}{new}.{rest}"] = torch.zeros_like(out[key])
    return out


def open_clip_to_hf(state_dict: Tensors, *, drop_last_layer: bool = False) -> dict[str, torch.Tensor]:
    """OpenCLIP ``model.*`` keys (no outer prefix) -> transformers CLIP text keys."""
    layers = sorted(
        {int(k[len(_OC_LAYER) :].split(".", 1)[0]) for k in state_dict if k.startswith(_OC_LAYER)}
    )
    dropped = layers[-1] if drop_last_layer else None
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "model.token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "model.positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("model.ln_final."):
            out["text_model.final_layer_norm." + key.rsplit(".", 1)[1]] = value
        elif key == "model.text_projection":
            if not drop_last_layer:  # SD 2.x diffusers text encoders have no projection
                out["text_projection.weight"] = value.t().contiguous()
        elif key in _DROPPED_ORIGINAL:
            continue
        elif key.startswith(_OC_LAYER):
            index_str, rest = key[len(_OC_LAYER) :].split(".", 1)
            index = int(index_str)
            if index == dropped:
                continue
            p = f"{_HF_LAYER}{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                q, k, v = value.chunk(3, dim=0)
                for name, part in (("q", q), ("k", k), ("v", v)):
                    out[f"{p}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            for hf_name, oc_name in _LAYER_RENAMES.items():
                if rest.startswith(oc_name):
                    out[p + hf_name + rest[len(oc_name) :]] = value
                    break
            else:
                raise KeyError(f"unknown OpenCLIP layer key {key!r}")
        else:
            raise KeyError(f"unknown OpenCLIP text key {key!r}; expected keys under model.")
    return out


def _add_prefix(prefix: str, state_dict: Tensors) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def _take_prefix(prefix: str, state_dict: Tensors) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def text_diffusers_to_original(family: str, te1: Tensors | None, te2: Tensors | None) -> dict[str, torch.Tensor]:
    """diffusers ``text_encoder`` / ``text_encoder_2`` state dicts -> single-file text keys."""
    base = base_family(family)
    prefix1, prefix2 = text_prefixes(family)
    out: dict[str, torch.Tensor] = {}
    if te1 is not None:
        if prefix1 is None:
            raise ValueError(f"family {family!r} has no first text encoder; pass te1=None")
        if base == "sd2":
            out.update(_add_prefix(prefix1, hf_to_open_clip(te1, add_identity_layer=True)))
        else:  # OpenAI CLIP-L keeps transformers' names under `transformer.`
            out.update(_add_prefix(prefix1 + "transformer.", with_text_model_prefix(te1)))
    if te2 is not None:
        if prefix2 is None:
            raise ValueError(f"family {family!r} has no second text encoder; pass te2=None")
        out.update(_add_prefix(prefix2, hf_to_open_clip(te2)))
    return out


def text_original_to_diffusers(
    family: str, state_dict: Tensors
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """Single-file state dict (text keys; other keys ignored) -> (text_encoder, text_encoder_2)."""
    base = base_family(family)
    prefix1, prefix2 = text_prefixes(family)
    te1: dict[str, torch.Tensor] | None = None
    te2: dict[str, torch.Tensor] | None = None
    if prefix1 is not None:
        part = _take_prefix(prefix1, state_dict)
        if part:
            if base == "sd2":
                te1 = open_clip_to_hf(part, drop_last_layer=True)
            else:
                unknown = [k for k in part if not k.startswith("transformer.")]
                if unknown:
                    raise KeyError(f"unexpected CLIP-L keys under {prefix1!r}: {unknown[:5]}")
                te1 = _take_prefix("transformer.", part)
    if prefix2 is not None:
        part = _take_prefix(prefix2, state_dict)
        if part:
            te2 = open_clip_to_hf(part)
    return te1, te2


def diffusers_text_config(family: str, te: Tensors, *, second: bool) -> dict[str, object]:
    """A transformers ``CLIPTextConfig`` dict (config.json) for a converted text encoder.

    The head count is not stored in the weights: every released CLIP/OpenCLIP tower uses
    64 channels per head, so heads = width // 64 (at least 1 for narrower test models).
    """
    base = base_family(family)
    vocab, width = te["text_model.embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[3] for k in te if k.startswith(_HF_LAYER)})
    openai = base in ("sd1", "sdxl") and not second
    config: dict[str, object] = {
        "architectures": ["CLIPTextModelWithProjection" if "text_projection.weight" in te else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": te["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": te["text_model.embeddings.position_embedding.weight"].shape[0],
        "hidden_act": "quick_gelu" if openai else "gelu",
        "layer_norm_eps": 1e-5,
        # The released configs' legacy ids: eos 2 makes transformers pool at argmax(ids),
        # which is the end token under both paddings (end token for CLIP-L, 0 for OpenCLIP).
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    if "text_projection.weight" in te:
        config["projection_dim"] = te["text_projection.weight"].shape[0]
    return config
