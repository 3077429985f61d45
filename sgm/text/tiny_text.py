"""The embedded model's text encoder: a word-level tokenizer and a small transformer.

Tokenizer: lower-case words (``[a-z0-9]+``), each looked up in a vocabulary stored in the
checkpoint's metadata (``latentflow.tiny_text`` = JSON ``{"vocab": [...], "max_length": T,
"width": C, "layers": L, "heads": H}``). A sequence is ``<bos> words... <eos> <pad>...`` of
exactly ``max_length`` tokens; longer prompts are truncated (with a log warning).
Unknown words map to the explicit ``<unk>`` token (id 1) and are reported through
``logging`` (warning): the model was trained on a closed vocabulary, so the user learns
which words it cannot read while the prompt still runs.

Encoder: token + learned position embeddings, ``L`` pre-LayerNorm transformer blocks
with bidirectional self-attention (padding keys masked), a final LayerNorm. Its output
``(B, T, C)`` is the UNet's cross-attention context. Tensors live under
``cond_stage_model.`` in the single-file checkpoint; :func:`build_conditioner` is the hook
named by the file's ``latentflow.text_encoder`` metadata.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PREFIX = "cond_stage_model."
METADATA_KEY = "latentflow.tiny_text"
HOOK = "sgm.text.tiny_text:build_conditioner"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TinyTextConfig:
    vocab: tuple[str, ...]  # words only; ids start after the special tokens
    max_length: int = 16
    width: int = 128
    layers: int = 2
    heads: int = 4

    def to_json(self) -> str:
        return json.dumps({"vocab": list(self.vocab), "max_length": self.max_length, "width": self.width,
                           "layers": self.layers, "heads": self.heads})

    @classmethod
    def from_json(cls, text: str) -> "TinyTextConfig":
        raw = json.loads(text)
        return cls(vocab=tuple(raw["vocab"]), max_length=int(raw["max_length"]), width=int(raw["width"]),
                   layers=int(raw["layers"]), heads=int(raw["heads"]))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def vocabulary_of(captions: Iterable[str]) -> tuple[str, ...]:
    """The sorted set of words in ``captions`` (the vocabulary to train with)."""
    return tuple(sorted({word for caption in captions for word in words(caption)}))


class WordTokenizer:
    """Words -> ids with ``<bos>``/``<eos>``/``<pad>`` framing and an ``<unk>`` fallback."""

    def __init__(self, vocab: Iterable[str], max_length: int) -> None:
        self.vocab = tuple(vocab)
        if len(set(self.vocab)) != len(self.vocab) or set(self.vocab) & set(SPECIAL_TOKENS):
            raise ValueError("vocabulary words must be unique and must not be special tokens")
        if max_length < 2:
            raise ValueError(f"max_length must fit <bos> and <eos>, got {max_length}")
        self.max_length = max_length
        self.ids = {word: index + len(SPECIAL_TOKENS) for index, word in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.vocab)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, max_length) int64 token ids."""
        batch = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            prompt_words = words(prompt)
            unknown = sorted({word for word in prompt_words if word not in self.ids})
            if unknown:
                logger.warning("words not in the tiny text encoder's vocabulary (read as <unk>): %s", unknown)
            if len(prompt_words) > self.max_length - 2:
                logger.warning("prompt has %d words; only the first %d are read", len(prompt_words),
                               self.max_length - 2)
                prompt_words = prompt_words[: self.max_length - 2]
            ids = [BOS, *(self.ids.get(word, UNK) for word in prompt_words), EOS]
            batch[row, : len(ids)] = torch.tensor(ids)
        return batch


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention and a GELU MLP, both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); key_mask: (B, 1, 1, T) True where attention may look."""
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=key_mask)  # (B, heads, T, C/heads)
        x = x + self.proj(h.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyTextEncoder(nn.Module):
    """Token ids (B, T) -> context (B, T, C)."""

    def __init__(self, config: TinyTextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(len(SPECIAL_TOKENS) + len(config.vocab), config.width)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        key_mask = (tokens != PAD)[:, None, None, :]  # (B, 1, 1, T); <bos> keeps every row non-empty
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask)
        return self.final_norm(x)


class TinyTextConditioner:
    """The object ``load_checkpoint`` keeps as ``Checkpoint.conditioner`` for tiny-shapes."""

    def __init__(self, encoder: TinyTextEncoder, family: str = "tiny-shapes") -> None:
        self.encoder = encoder
        self.tokenizer = WordTokenizer(encoder.config.vocab, encoder.config.max_length)
        self.family = family
        self.modules: list[nn.Module] = [encoder]

    def encode_text(self, prompts: list[str], *, force_pooled: bool = False,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prompts -> (context (B, T, C), None). Extra kwargs (clip_skip, ...) do not apply and are ignored.
        ``force_pooled``: also the final state at each prompt's ``<eos>`` (B, C), CLIP's pooled output
        (GLIGEN's phrase embedding) in place of None."""
        if isinstance(prompts, str):
            raise TypeError("encode_text takes a list of prompts, not a single string")
        weight = self.encoder.token_embedding.weight
        tokens = self.tokenizer.encode(list(prompts)).to(weight.device)
        with torch.no_grad():
            context = self.encoder(tokens)
        if not force_pooled:
            return context, None
        eos = (tokens == EOS).int().argmax(dim=1)  # (B,) every sequence has one (truncation keeps it)
        return context, context[torch.arange(context.shape[0], device=context.device), eos]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors with their ``cond_stage_model.`` prefix, ready for ``save_checkpoint``."""
        return {PREFIX + key: value for key, value in self.encoder.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.encoder.config.to_json(), "latentflow.text_encoder": HOOK}


def build_conditioner(text_state_dict: Mapping[str, torch.Tensor], family: str, metadata: dict[str, str], *,
                      model_path: Path | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> TinyTextConditioner:
    """The ``latentflow.text_encoder`` hook: rebuild the encoder from the file's tensors and metadata."""
    if METADATA_KEY not in metadata:
        raise KeyError(f"{model_path or 'checkpoint'} lacks metadata {METADATA_KEY!r} (the tiny text "
                       "encoder's vocabulary and sizes); it was not written by sgm.tools.train")
    config = TinyTextConfig.from_json(metadata[METADATA_KEY])
    state = {key[len(PREFIX):] if key.startswith(PREFIX) else key: value for key, value in text_state_dict.items()}
    encoder = TinyTextEncoder(config)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"tiny text encoder tensors do not match its metadata: missing {missing[:4]}, "
                       f"unexpected {unexpected[:4]}")
    encoder = encoder.to(device=device, dtype=dtype if dtype is not None else torch.float32).eval()
    return TinyTextConditioner(encoder, family)
