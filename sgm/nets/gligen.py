"""GLIGEN: grounded generation with phrase + bounding-box tokens (Li et al. 2023, arXiv:2301.07093).

A frozen SD 1.x UNet gets, in every transformer block between self- and cross-attention, a
gated self-attention over the block's visual tokens and a set of grounding tokens (eq. 8):

    v <- v + tanh(gamma) * TS(SelfAttn([v, h^e]))        # only the visual tokens are kept
    v <- v + tanh(beta) * FF(v)                            # the dense gate of the release

The grounding tokens h^e = MLP([phrase embedding, Fourier(box)]) (eq. 5) come from the
``PositionNet``; up to 30 boxes, absent slots use learnt null features.

File layout (the released ``gligen_sd14_textbox_pruned.safetensors`` and ComfyUI's loader):
``position_net.linears.{0,2,4}``, ``position_net.null_positive_feature`` /
``null_position_feature``, and per transformer block
``{input_blocks.1.1,...}.transformer_blocks.N.fuser.{linear, attn.to_q/k/v/to_out.0,
ff.net.0.proj, ff.net.2, norm1, norm2, alpha_attn, alpha_dense}``, named after the UNet
block they attach to, so a fuser is matched to its block by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from sgm.nets.attention import BasicTransformerBlock, CrossAttention, FeedForward, attention

MAX_OBJECTS = 30  # grounding tokens per image (the released model's training maximum)
FOURIER_FREQS = 8


def fourier_box_embedding(boxes: torch.Tensor, freqs: int = FOURIER_FREQS) -> torch.Tensor:
    """boxes (B, N, 4) in [0, 1] (x0, y0, x1, y1) -> (B, N, 4 * 2 * freqs): for each frequency
    100^(k/freqs), sin then cos of every coordinate (the release's order)."""
    bands = 100.0 ** (torch.arange(freqs, device=boxes.device, dtype=boxes.dtype) / freqs)  # (F,)
    angles = bands[:, None] * boxes[..., None, :]  # (B, N, F, 4)
    return torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # (B, N, F * 2 * 4)


class PositionNet(nn.Module):
    """Phrase embedding (B, N, D) + box (B, N, 4) + mask (B, N) -> grounding tokens (B, N, out)."""

    def __init__(self, in_dim: int, out_dim: int, freqs: int = FOURIER_FREQS, hidden: int = 512) -> None:
        super().__init__()
        self.freqs = freqs
        position_dim = 4 * 2 * freqs
        self.linears = nn.Sequential(
            nn.Linear(in_dim + position_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        m = masks[..., None].to(phrases.dtype)  # (B, N, 1): 1 = a real box, 0 = an empty slot
        position = fourier_box_embedding(boxes, self.freqs)
        position = position * m + (1 - m) * self.null_position_feature.to(position.dtype)
        phrases = phrases * m + (1 - m) * self.null_positive_feature.to(phrases.dtype)
        return self.linears(torch.cat([phrases, position], dim=-1))


class GatedSelfAttentionDense(nn.Module):
    """The fuser of one transformer block (eq. 8 plus the dense gate)."""

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)  # grounding tokens -> the block's width
        self.attn = CrossAttention(query_dim, None, n_heads, d_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        # x: (B, T, query_dim) visual tokens; objs: (B, N, context_dim) grounding tokens. ``heads``:
        # the host block's head count (the file cannot tell it; GLIGEN uses its block's heads).
        visual = x.shape[1]
        tokens = self.norm1(torch.cat([x, self.linear(objs.to(x.dtype))], dim=1))
        a = self.attn
        attended = a.to_out(attention(a.to_q(tokens), a.to_k(tokens), a.to_v(tokens), heads or a.heads))
        x = x + self.alpha_attn.tanh() * attended[:, :visual]
        return x + self.alpha_dense.tanh() * self.ff(self.norm2(x))


class Gligen(nn.Module):
    """The position net and one fuser per UNet transformer block (``fusers[block name]``)."""

    def __init__(self, position_net: PositionNet, fusers: Mapping[str, GatedSelfAttentionDense]) -> None:
        super().__init__()
        self.position_net = position_net
        self.block_names = tuple(fusers)
        self.fusers = nn.ModuleList(fusers.values())

    @property
    def phrase_dim(self) -> int:
        return int(self.position_net.null_positive_feature.shape[0])

    def objects(self, boxes: Sequence["GroundingBox"], latent_height: int, latent_width: int, batch: int,
                ) -> torch.Tensor:
        """Grounding tokens (batch, 30, D) for boxes in latent pixels (the same boxes for every image)."""
        if len(boxes) > MAX_OBJECTS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJECTS} boxes per image, got {len(boxes)}; "
                             "drop some GLIGENTextBoxApply nodes")
        weight = self.position_net.null_positive_feature
        phrases = weight.new_zeros(1, MAX_OBJECTS, self.phrase_dim)
        coords = weight.new_zeros(1, MAX_OBJECTS, 4)
        masks = weight.new_zeros(1, MAX_OBJECTS)
        for i, box in enumerate(boxes):
            embedding = box.phrase.reshape(-1)
            if embedding.shape[0] != self.phrase_dim:
                raise ValueError(f"GLIGEN phrase embedding has width {embedding.shape[0]}, this GLIGEN model "
                                 f"takes {self.phrase_dim}; encode the box text with the matching CLIP (SD 1.x)")
            phrases[0, i] = embedding.to(phrases)
            coords[0, i] = torch.tensor([box.x / latent_width, box.y / latent_height, (box.x + box.width)
                                         / latent_width, (box.y + box.height) / latent_height], dtype=coords.dtype)
            masks[0, i] = 1.0
        return self.position_net(coords, masks, phrases).expand(batch, -1, -1)


@dataclass(frozen=True, eq=False)
class GroundingBox:
    """One phrase in a box, in latent pixels (x, y = top left)."""

    phrase: torch.Tensor  # (1, D) the phrase's pooled text embedding
    width: int
    height: int
    x: int
    y: int


def load_gligen(state_dict: Mapping[str, torch.Tensor]) -> Gligen:
    """Build a :class:`Gligen` from a released GLIGEN file's tensors (see the module docstring)."""
    prefix = "position_net."
    if prefix + "linears.0.weight" not in state_dict:
        raise KeyError(f"not a GLIGEN file: no {prefix}linears.0.weight (found {sorted(state_dict)[:4]})")
    first = state_dict[prefix + "linears.0.weight"]
    in_dim = int(state_dict[prefix + "null_positive_feature"].shape[0])
    position_dim = int(state_dict[prefix + "null_position_feature"].shape[0])
    position_net = PositionNet(in_dim, int(state_dict[prefix + "linears.4.weight"].shape[0]), position_dim // 8,
                               hidden=int(first.shape[0]))
    fusers: dict[str, GatedSelfAttentionDense] = {}
    for key in sorted(k for k in state_dict if k.endswith(".fuser.linear.weight")):
        block = key[: -len(".fuser.linear.weight")]
        query_dim, context_dim = state_dict[key].shape
        # 8 heads as SD 1.x; while applied, a fuser runs with its host block's head count.
        fusers[block] = GatedSelfAttentionDense(int(query_dim), int(context_dim), 8, int(query_dim) // 8)
    if not fusers:
        raise KeyError("GLIGEN file has a position net but no '*.fuser.*' tensors")
    model = Gligen(position_net, fusers)
    tensors = {k.replace(".fuser.", "\0"): v for k, v in state_dict.items()}  # block name, then fuser key
    own: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            own[k] = v
        elif "\0" in k:
            block, rest = k.split("\0", 1)
            own[f"fusers.{model.block_names.index(block)}.{rest}"] = v
    missing, unexpected = model.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise KeyError(f"GLIGEN file does not match the released layout: missing {missing[:6]}, "
                       f"unexpected {unexpected[:6]}")
    return model.eval().requires_grad_(False)


@contextmanager
def gligen_applied(unet: nn.Module, gligen: Gligen, objs: torch.Tensor, gate: torch.Tensor) -> Iterator[None]:
    """Run ``unet`` with the fusers between its blocks' self- and cross-attention.

    objs: (B, 30, D) grounding tokens per UNet batch row; gate: (B,) 1 where a row is grounded
    (a positive condition with boxes), 0 where the block runs unchanged (e.g. the uncond row
    batched with it). The blocks are restored on exit.
    """
    blocks = dict(unet.named_modules())
    patched: list[BasicTransformerBlock] = []
    try:
        for name, fuser in zip(gligen.block_names, gligen.fusers):
            block = blocks.get(name)
            if not isinstance(block, BasicTransformerBlock):
                raise ValueError(f"GLIGEN fuser {name!r} has no transformer block of that name in this UNet; "
                                 "GLIGEN models are made for SD 1.x UNets")
            if block.attn1.to_q.in_features != fuser.linear.out_features:
                raise ValueError(f"GLIGEN fuser {name!r} is {fuser.linear.out_features} wide, the UNet block "
                                 f"{block.attn1.to_q.in_features}: this GLIGEN model is for another UNet")

            def between(x: torch.Tensor, fuser: GatedSelfAttentionDense = fuser, heads: int = block.attn1.heads,
                        ) -> torch.Tensor:
                fused = fuser(x, objs.to(x.device), heads)
                g = gate.to(device=x.device, dtype=x.dtype)[:, None, None]
                return x + g * (fused - x)

            block.between_attentions = between
            patched.append(block)
        yield
    finally:
        for block in patched:
            block.between_attentions = None
