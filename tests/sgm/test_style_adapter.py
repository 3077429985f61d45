"""The T2I style adapter (sgm.nets.style_adapter) against an independent re-implementation of TencentARC's
architecture (torch's nn.MultiheadAttention, sequence-first, as the original runs), its file layout
(sgm.io.style_model_files) and how its tokens join the conditioning."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sgm.io.state_dict import CheckpointError
from sgm.io.style_model_files import (StyleModelError, append_style, build_style_adapter, load_style_model,
                                      style_adapter_config)
from sgm.nets.style_adapter import StyleAdapter, StyleAdapterConfig, style_tokens
from sgm.text.conditioning import Condition

TINY = StyleAdapterConfig(width=32, context_dim=24, heads=4, layers=2, num_token=3)


class _RefBlock(nn.Module):
    """OpenAI CLIP's ResidualAttentionBlock as the original adapter uses it: (T, B, W) in and out."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.Identity()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        hidden = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))


class _RefAdapter(nn.Module):
    def __init__(self, c: StyleAdapterConfig) -> None:
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_RefBlock(c.width, c.heads) for _ in range(c.layers)])
        self.num_token = c.num_token
        self.style_embedding = nn.Parameter(torch.randn(1, c.num_token, c.width))
        self.ln_post = nn.LayerNorm(c.width)
        self.ln_pre = nn.LayerNorm(c.width)
        self.proj = nn.Parameter(torch.randn(c.width, c.context_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.style_embedding + torch.zeros(x.shape[0], self.num_token, x.shape[-1])], dim=1)
        x = self.transformer_layes(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x[:, -self.num_token:, :]) @ self.proj


def reference_state(seed: int = 0, config: StyleAdapterConfig = TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ref = _RefAdapter(config)
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in ref.named_parameters():
            if name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                p.add_(0.1 * torch.randn_like(p))
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def hidden(batch: int = 2, tokens: int = 5, width: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(seed))


def test_forward_matches_the_original_architecture() -> None:
    state = reference_state()
    ref = _RefAdapter(TINY)
    ref.load_state_dict(state)
    ours = build_style_adapter(state, heads=TINY.heads)  # also checks the key names: no key missing or extra
    assert ours.config == TINY
    x = hidden()
    with torch.no_grad():
        expected = ref.eval()(x)
        got = ours(x)
    assert got.shape == (2, 3, 24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Batch rows are independent: row 1 alone gives the same tokens.
    torch.testing.assert_close(ours(x[1:]), expected[1:], rtol=1e-5, atol=1e-5)
    # The tokens of a batch of images are joined into one row (1, B * N, C), as ComfyUI does.
    joined = style_tokens(ours, x, "cpu")
    assert joined.shape == (1, 6, 24)
    torch.testing.assert_close(joined[0, 3:], expected[1], rtol=1e-5, atol=1e-5)


def test_released_sizes_are_read_from_the_file() -> None:
    with torch.device("meta"):
        shapes = {k: v for k, v in StyleAdapter(StyleAdapterConfig()).state_dict().items()}
    assert style_adapter_config(shapes) == StyleAdapterConfig(1024, 768, 8, 3, 8)
    assert shapes["transformer_layes.2.attn.in_proj_weight"].shape == (3072, 1024)
    assert shapes["transformer_layes.0.mlp.c_fc.weight"].shape == (4096, 1024)
    assert len(shapes) == 6 + 3 * 12  # style_embedding, proj, ln_pre, ln_post; 12 per layer


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_key_layout_round_trip(tmp_path: Path, suffix: str) -> None:
    state = reference_state(seed=3)
    path = tmp_path / f"t2iadapter_style_tiny{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = load_style_model(path)
    assert set(loaded.state_dict()) == set(state)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    assert loaded.config == StyleAdapterConfig(32, 24, 8, 2, 3)  # heads: the original's 8 (not in the file)


def test_refuses_redux_other_files_and_code(tmp_path: Path) -> None:
    redux = tmp_path / "flux1-redux-dev.safetensors"
    save_file({"redux_up.weight": torch.zeros(2, 2), "redux_down.weight": torch.zeros(2, 2)}, str(redux))
    with pytest.raises(StyleModelError, match="Flux Redux"):
        load_style_model(redux)
    other = tmp_path / "canny.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(StyleModelError, match="not a T2I style adapter.*conv_in.weight"):
        load_style_model(other)
    with pytest.raises(StyleModelError, match="unsupported file type '.onnx'"):
        load_style_model(tmp_path / "style.onnx")

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"style_embedding": Evil()}, evil)
    with pytest.raises(CheckpointError, match="contains code"):
        load_style_model(evil)


def test_wrong_clip_vision_width_is_named() -> None:
    adapter = build_style_adapter(reference_state())
    with pytest.raises(ValueError, match=r"\(B, T, 32\), got shape \(1, 5, 16\).*ViT-L/14"):
        adapter(torch.zeros(1, 5, 16))


def test_append_style_adds_the_tokens_to_every_condition() -> None:
    tokens = torch.arange(2 * 24, dtype=torch.float32).reshape(1, 2, 24)
    first = Condition(context=torch.ones(1, 4, 24), extra={"prompt": "a"})
    second = Condition(context=torch.zeros(2, 6, 24), strength=0.5)
    out = append_style([first, second], tokens, 0.25, "multiply")
    assert [c.context.shape for c in out] == [(1, 6, 24), (2, 8, 24)]
    assert torch.equal(out[0].context[:, :4], first.context)
    assert torch.equal(out[0].context[0, 4:], 0.25 * tokens[0])
    assert torch.equal(out[1].context[1, 6:], 0.25 * tokens[0])  # every prompt row of the batch
    assert out[0].extra == {"prompt": "a"} and out[1].strength == 0.5  # the rest kept
    assert first.context.shape == (1, 4, 24) and torch.equal(tokens[0, 0, :3], torch.tensor([0.0, 1.0, 2.0]))
    # attn_bias at strength 1 is a zero bias: the tokens as they are.
    same = append_style([first], tokens, 1.0, "attn_bias")
    assert torch.equal(same[0].context[0, 4:], tokens[0])


def test_append_style_errors() -> None:
    cond = [Condition(context=torch.zeros(1, 4, 24))]
    with pytest.raises(ValueError, match="'attn_bias' with strength 0.5 is not supported.*'multiply'"):
        append_style(cond, torch.zeros(1, 2, 24), 0.5, "attn_bias")
    with pytest.raises(ValueError, match="16-wide tokens but the conditioning is 24 wide"):
        append_style(cond, torch.zeros(1, 2, 16), 1.0, "multiply")
    with pytest.raises(ValueError, match="strength_type must be one of"):
        append_style(cond, torch.zeros(1, 2, 24), 1.0, "add")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_give_float32_tokens_close_to_fp32(dtype: torch.dtype) -> None:
    state = reference_state(seed=7)
    full = build_style_adapter(state, heads=TINY.heads)
    half = build_style_adapter(state, heads=TINY.heads, dtype=dtype)
    assert half.proj.dtype == dtype
    x = hidden(seed=8)
    reference, tokens = style_tokens(full, x, "cpu"), style_tokens(half, x, "cpu")
    assert tokens.dtype == torch.float32
    assert float((tokens - reference).norm() / reference.norm()) < 2e-2
