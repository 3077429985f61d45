"""Text conditioning for SD 1.x / 2.x / SDXL: prompts -> (context, pooled).

Per family (the tower modules live in ``sgm.nets.clip_models``; key names are the released ones):

============  ==========================================  =============  ==========  ==========
family        encoders (single-file prefix)               context layer  final norm  pooled
============  ==========================================  =============  ==========  ==========
sd1           CLIP-L ``cond_stage_model.transformer.``    last           yes         --
sd2           OpenCLIP-H ``cond_stage_model.model.``      penultimate    yes         --
sdxl          CLIP-L ``conditioner.embedders.0.``,        penultimate    no          bigG,
              OpenCLIP-bigG ``conditioner.embedders.1.``  (both, concat)             projected
sdxl-refiner  OpenCLIP-bigG ``conditioner.embedders.0.``  penultimate    no          projected
============  ==========================================  =============  ==========  ==========

``clip_skip`` counts layers from the end as A1111 and ComfyUI do: 1 = last layer,
2 = penultimate; ``None`` keeps the family's default above. The family's final-norm rule
applies to whichever layer is chosen (so SD 1.x with clip_skip=2 is the penultimate
layer *plus* the final layer norm, like ComfyUI and A1111). diffusers counts layers skipped beyond its default
instead: its ``clip_skip=c`` is our ``c + 1`` for SD 1.x and ``c + 2`` for SDXL.

Long prompts are split into chunks of up to 75 tokens, each encoded in its own 77-token
window (start, tokens, end, padding) and concatenated along the sequence; as in ComfyUI a
word of up to 8 tokens that would straddle a boundary moves whole to the next chunk. Prompts
of one batch with fewer chunks get empty-prompt chunks. Weights apply per token as
z' = z_empty + w (z - z_empty), z_empty being the empty prompt's encoding (ComfyUI's
default). The pooled output is the first chunk's, computed from the unweighted states.

OpenCLIP towers are tokenized as OpenCLIP does: padding with id 0, and a literal "!" in
a prompt stays the ordinary token "!</w>" (256). diffusers' SD 2.x / SDXL tokenizers,
which declare "!" as their pad token, turn a literal "!" into 0; we do not copy that quirk.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sgm.nets.clip_models import (
    ClipTextModel,
    OpenClipTextModel,
    _TextTower,
    infer_clip_config,
    infer_open_clip_config,
)
from sgm.text.conditioning import Condition
from sgm.text.prompt_weighting import embedding_for_width, find_embedding, load_embedding, parse_prompt
from sgm.text.sdxl_conditioning import sdxl_refiner_vector, sdxl_vector
from sgm.text.tokenizer import CHUNK, WINDOW, ClipTokenizer, chunk_words, load_clip_tokenizer, split_words

logger = logging.getLogger(__name__)

TEXT_ENCODER_HOOK = "latentflow.text_encoder"
# Builders named in files written before the library was split into wings (sgm.text, ...).
_MOVED_HOOKS = {"sgm.tiny_text:build_conditioner": "sgm.text.tiny_text:build_conditioner"}


def base_family(family: str) -> str:
    """``sd2-v`` -> ``sd2``, ``sd1-inpaint`` -> ``sd1``, ``sdxl-inpaint`` -> ``sdxl``."""
    base = family.removesuffix("-inpaint")
    return "sd2" if base == "sd2-v" else base
# Keys the released files carry that no text encoding uses.
_IGNORED_SUFFIXES = ("transformer.text_model.embeddings.position_ids", "model.logit_scale", "model.attn_mask")


@dataclass(frozen=True)
class EncoderRole:
    """How one text tower of a family is stored and used."""

    prefix: str
    layout: Literal["clip", "open_clip"]
    pad_with_end: bool  # CLIP-L pads with the end token, OpenCLIP with 0
    final_norm: bool
    default_clip_skip: int
    pooled: bool


FAMILY_ROLES: dict[str, tuple[EncoderRole, ...]] = {
    "sd1": (EncoderRole("cond_stage_model.", "clip", True, True, 1, False),),
    "sd2": (EncoderRole("cond_stage_model.", "open_clip", False, True, 2, False),),
    "sdxl": (
        EncoderRole("conditioner.embedders.0.", "clip", True, False, 2, False),
        EncoderRole("conditioner.embedders.1.", "open_clip", False, False, 2, True),
    ),
    "sdxl-refiner": (EncoderRole("conditioner.embedders.0.", "open_clip", False, False, 2, True),),
}


@dataclass(frozen=True)
class _Batch:
    """Tokenized prompts: B prompts x k chunks, flattened to B*k windows of 77."""

    ids: torch.Tensor  # (B*k, 77) int64, embedding slots hold 0
    weights: torch.Tensor  # (B*k, 77) float
    eos_index: torch.Tensor  # (B*k,) position of each window's end token
    slots: tuple[tuple[int, int, str, int], ...]  # (window, position, embedding name, row)
    prompts: int
    chunks: int


class TextConditioner:
    """A family's text towers plus the tokenizer; see the module docstring for the rules."""

    def __init__(
        self,
        family: str,
        towers: list[tuple[EncoderRole, _TextTower]],
        *,
        tokenizer: ClipTokenizer | None = None,
        model_path: Path | None = None,
    ) -> None:
        self.family = family
        self.towers = towers
        self.modules: list[nn.Module] = [tower for _, tower in towers]
        self._tokenizer = tokenizer
        self._model_path = model_path

    @cached_property
    def tokenizer(self) -> ClipTokenizer:
        """Loaded on first use, so a checkpoint loads even where the merges are missing."""
        return self._tokenizer or load_clip_tokenizer(model_path=self._model_path)

    # -- tokenization -------------------------------------------------------------------

    def _tokenize(self, prompts: list[str], embeddings: dict[str, dict[str, torch.Tensor]],
                  embeddings_dir: Path | None) -> _Batch:
        tok = self.tokenizer
        chunked: list[list[list[tuple[int | tuple[str, int], float]]]] = []
        for prompt in prompts:
            words: list[list[tuple[int | tuple[str, int], float]]] = []  # tokens per word
            for part in parse_prompt(prompt):
                if part.embedding is None:
                    words.extend([(i, part.weight) for i in tok.encode(w)] for w in split_words(part.text))
                    continue
                if embeddings_dir is None:
                    raise ValueError(
                        f"prompt uses 'embedding:{part.embedding}' but no embeddings folder was "
                        "given; pass embeddings_dir (e.g. models/embeddings)"
                    )
                if part.embedding not in embeddings:
                    embeddings[part.embedding] = load_embedding(find_embedding(part.embedding, embeddings_dir))
                rows = next(iter(embeddings[part.embedding].values())).shape[0]
                words.append([((part.embedding, r), part.weight) for r in range(rows)])
            chunked.append(chunk_words(words, CHUNK))
        k = max(len(c) for c in chunked)
        ids, weights, eos, slots = [], [], [], []
        for chunks in chunked:
            for chunk in chunks + [[]] * (k - len(chunks)):
                window = len(ids)
                row_ids = [tok.bos_id]
                for position, (item, _) in enumerate(chunk, start=1):
                    if isinstance(item, tuple):
                        slots.append((window, position, item[0], item[1]))
                        row_ids.append(0)
                    else:
                        row_ids.append(item)
                eos.append(len(row_ids))
                row_ids.append(tok.eos_id)
                ids.append(row_ids + [-1] * (WINDOW - len(row_ids)))  # -1: padding, per tower
                weights.append([1.0] + [w for _, w in chunk] + [1.0] * (WINDOW - 1 - len(chunk)))
        return _Batch(
            ids=torch.tensor(ids, dtype=torch.long),
            weights=torch.tensor(weights, dtype=torch.float32),
            eos_index=torch.tensor(eos, dtype=torch.long),
            slots=tuple(slots),
            prompts=len(prompts),
            chunks=k,
        )

    # -- encoding -----------------------------------------------------------------------

    def _embeds(self, role: EncoderRole, tower: _TextTower, ids: torch.Tensor, batch: _Batch,
                embeddings: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        weight = tower.token_embedding_weight()
        pad = self.tokenizer.eos_id if role.pad_with_end else 0
        ids = torch.where(ids < 0, torch.full_like(ids, pad), ids).to(weight.device)
        embeds = tower.embed_tokens(ids)  # (N, 77, C)
        if batch.slots:
            prefer = "clip_l" if role.layout == "clip" else "clip_g"  # SDXL embedding file keys
            window = torch.tensor([s[0] for s in batch.slots], device=weight.device)
            position = torch.tensor([s[1] for s in batch.slots], device=weight.device)
            vectors = torch.stack(
                [embedding_for_width(embeddings[name], tower.config.width, name, prefer=prefer)[row]
                 for _, _, name, row in batch.slots]
            ).to(device=weight.device, dtype=embeds.dtype)
            embeds = embeds.index_put((window, position), vectors)  # out of place
        return embeds

    def encode_text(
        self,
        prompts: list[str],
        *,
        clip_skip: int | None = None,
        embeddings_dir: Path | None = None,
        force_pooled: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts -> (context (B, 77*k, C), pooled (B, P) or None), weighting applied.

        ``force_pooled``: in families whose conditioning has no pooled output (SD 1.x / 2.x),
        give the first tower's anyway (its final-norm end-token state, projected where the tower
        has a projection): what GLIGEN takes as a phrase embedding, as ComfyUI's CLIP gives it."""
        if isinstance(prompts, str) or not prompts:
            raise TypeError(f"encode_text takes a non-empty list of prompts, got {prompts!r}; wrap one prompt as [prompt]")
        embeddings: dict[str, dict[str, torch.Tensor]] = {}
        batch = self._tokenize(list(prompts), embeddings, embeddings_dir)
        weighted = bool((batch.weights != 1.0).any())
        empty = torch.full((1, WINDOW), -1, dtype=torch.long)
        empty[0, 0], empty[0, 1] = self.tokenizer.bos_id, self.tokenizer.eos_id
        ids = torch.cat([batch.ids, empty]) if weighted else batch.ids  # empty row last
        contexts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for role, tower in self.towers:
            skip = role.default_clip_skip if clip_skip is None else clip_skip
            layers = tower.config.layers
            if not isinstance(skip, int) or not 1 <= skip <= layers:
                raise ValueError(f"clip_skip must be an int in 1..{layers} (1 = last layer), got {clip_skip!r}")
            eos_index = None
            if role.pooled or (force_pooled and tower is self.towers[0][1]
                               and not any(r.pooled for r, _ in self.towers)):
                eos_index = batch.eos_index if not weighted else torch.cat([batch.eos_index, torch.ones(1, dtype=torch.long)])
                eos_index = eos_index.to(tower.token_embedding_weight().device)
            z, p = tower(self._embeds(role, tower, ids, batch, embeddings), hidden_layer=layers - skip + 1,
                         final_norm=role.final_norm, eos_index=eos_index)
            if weighted:
                z, z_empty = z[:-1], z[-1:]
                w = batch.weights.to(device=z.device, dtype=z.dtype)[..., None]  # (N, 77, 1)
                z = z_empty + w * (z - z_empty)
                p = None if p is None else p[:-1]
            contexts.append(z)
            if p is not None:
                pooled = p.view(batch.prompts, batch.chunks, -1)[:, 0]  # first chunk's pooled
        context = torch.cat(contexts, dim=-1)  # (B*k, 77, C_total)
        context = context.reshape(batch.prompts, batch.chunks * WINDOW, context.shape[-1])
        return context, pooled


def encode_condition(
    conditioner: TextConditioner,
    prompt: str,
    *,
    size: tuple[int, int] | None = None,
    original_size: tuple[int, int] | None = None,
    crop_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] | None = None,
    aesthetic_score: float = 6.0,
    clip_skip: int | None = None,
    embeddings_dir: Path | None = None,
) -> Condition:
    """One prompt -> the ``Condition`` its family's UNet needs (SDXL: with the vector ``y``).

    Sizes are (height, width) in pixels; for SDXL ``original_size`` and ``target_size``
    default to ``size`` (the image being generated), which must then be given.
    """
    context, pooled = conditioner.encode_text([prompt], clip_skip=clip_skip, embeddings_dir=embeddings_dir)
    y = None
    base = base_family(conditioner.family)
    if base in ("sdxl", "sdxl-refiner") and pooled is not None:
        original, target = original_size or size, target_size or size
        if original is None or target is None:
            raise ValueError(f"{conditioner.family} conditioning needs the image size: pass size=(height, width)")
        if base == "sdxl":
            y = sdxl_vector(pooled, original_size=original, crop_top_left=crop_top_left, target_size=target)
        else:
            y = sdxl_refiner_vector(pooled, original_size=original, crop_top_left=crop_top_left,
                                    aesthetic_score=aesthetic_score)
    return Condition(context=context, pooled=pooled, y=y, extra={"prompt": prompt})


# ---------------------------------------------------------------------- building


def _load_tower(role: EncoderRole, state_dict: dict[str, torch.Tensor], device: torch.device | str,
                dtype: torch.dtype | None) -> _TextTower:
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
    try:
        if role.layout == "clip":
            config, cls = infer_clip_config(state_dict, "quick_gelu"), ClipTextModel
        else:
            config, cls = infer_open_clip_config(state_dict, "gelu"), OpenClipTextModel
    except KeyError as error:
        raise KeyError(
            f"text encoder under {role.prefix!r} lacks {role.prefix}{error.args[0]}: expected the "
            f"released {'CLIP-L transformer.text_model.*' if role.layout == 'clip' else 'OpenCLIP model.*'} "
            f"layout, found keys {sorted(state_dict)[:4]}"
        ) from error
    with torch.device("meta"):
        tower = cls(config)
    expected = set(tower.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(
            f"text encoder under {role.prefix!r} ({role.layout}) does not match the released layout: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
            f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    tensors = {
        k: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
        for k, v in state_dict.items()
    }
    tower.load_state_dict(tensors, strict=True, assign=True)  # no second copy of the weights
    return tower.eval().requires_grad_(False)


def build_conditioner(
    text_state_dict: Mapping[str, torch.Tensor],
    family: str,
    metadata: dict[str, str],
    *,
    model_path: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: ClipTokenizer | None = None,
) -> TextConditioner | None:
    """Build a family's text conditioner from single-file text keys (original prefixes kept).

    Architecture comes from tensor shapes. Returns None without text tensors. Families we
    do not know are delegated to ``metadata['latentflow.text_encoder']`` = ``pkg.module:function``
    (called with the same arguments), so custom models can bring their own encoder.
    """
    if not text_state_dict:
        return None
    base = base_family(family)
    if base not in FAMILY_ROLES:
        hook = metadata.get(TEXT_ENCODER_HOOK)
        if not hook:
            raise ValueError(
                f"no text encoder is known for family {family!r} (known: {sorted(FAMILY_ROLES)} and "
                f"-inpaint/-v variants); a custom model must name its builder in metadata "
                f"{TEXT_ENCODER_HOOK!r} as 'pkg.module:function'"
            )
        hook = _MOVED_HOOKS.get(hook, hook)
        module_name, _, function_name = hook.partition(":")
        if not function_name:
            raise ValueError(f"metadata {TEXT_ENCODER_HOOK!r} = {hook!r} must look like 'pkg.module:function'")
        # A model file is data from anywhere: its metadata may name our own builders or one of
        # a module already imported (a plugin that brings a model format), never make us import
        # new code.
        if not (module_name == "sgm" or module_name.startswith("sgm.") or module_name in sys.modules):
            raise ValueError(
                f"metadata {TEXT_ENCODER_HOOK!r} names {hook!r}, but {module_name!r} is neither part of sgm "
                "nor an already imported module; a model file may not make us import code. Install the "
                "plugin that provides this model format (it imports its module when it loads)"
            )
        builder = getattr(importlib.import_module(module_name), function_name, None)
        if builder is None:
            raise ValueError(f"metadata {TEXT_ENCODER_HOOK!r} = {hook!r}: {module_name} has no {function_name!r}")
        return builder(text_state_dict, family, metadata, model_path=model_path, device=device, dtype=dtype)
    towers: list[tuple[EncoderRole, _TextTower]] = []
    claimed: set[str] = set()
    for role in FAMILY_ROLES[base]:
        part = {k[len(role.prefix):]: v for k, v in text_state_dict.items() if k.startswith(role.prefix)}
        if not part:
            raise KeyError(
                f"{family} checkpoint lacks its text encoder under {role.prefix!r}; found text keys "
                f"{sorted(text_state_dict)[:4]}"
            )
        claimed.update(role.prefix + k for k in part)
        towers.append((role, _load_tower(role, part, device, dtype)))
    leftover = sorted(set(text_state_dict) - claimed)
    if leftover:
        logger.warning("ignoring %d text keys outside the %s layout, e.g. %s", len(leftover), family, leftover[:3])
    return TextConditioner(family, towers, tokenizer=tokenizer, model_path=model_path)
