"""A1111 hypernetworks (sgm.io.hypernetwork): a tiny random file in A1111's layout loads, and while
patched the attention k / v inputs become c + s * f(c) with f computed by hand here; strength 0
is the identity and the hooks are gone afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sgm.io.hypernetwork import HypernetworkError, HypernetworkPatch, load_hypernetwork
from sgm.io.lora import patched
from tests.sgm.model_factories import tiny_unet

CONTEXT = 48  # differs from the UNet's channel widths (32, 64): only cross-attention has this width


def mlp_tensors(width: int, seed: int) -> dict[str, torch.Tensor]:
    """A1111's [1, 2, 1] network with relu and layer norm: Linear, ReLU, LayerNorm, Linear, LayerNorm
    (indices 0..4; the ReLU has no tensors)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "linear.0.weight": torch.randn(2 * width, width, generator=g) * 0.2,
        "linear.0.bias": torch.randn(2 * width, generator=g) * 0.1,
        "linear.2.weight": 1 + 0.1 * torch.randn(2 * width, generator=g),
        "linear.2.bias": 0.1 * torch.randn(2 * width, generator=g),
        "linear.3.weight": torch.randn(width, 2 * width, generator=g) * 0.2,
        "linear.3.bias": torch.randn(width, generator=g) * 0.1,
        "linear.4.weight": 1 + 0.1 * torch.randn(width, generator=g),
        "linear.4.bias": 0.1 * torch.randn(width, generator=g),
    }


def by_hand(t: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    h = F.relu(c @ t["linear.0.weight"].T + t["linear.0.bias"])
    h = F.layer_norm(h, h.shape[-1:], t["linear.2.weight"], t["linear.2.bias"])
    h = h @ t["linear.3.weight"].T + t["linear.3.bias"]
    return F.layer_norm(h, h.shape[-1:], t["linear.4.weight"], t["linear.4.bias"])


@pytest.fixture()
def hypernetwork_file(tmp_path: Path) -> tuple[Path, dict]:
    data = {
        CONTEXT: [mlp_tensors(CONTEXT, 1), mlp_tensors(CONTEXT, 2)],
        "activation_func": "relu", "is_layer_norm": True, "use_dropout": True, "activate_output": False,
        "layer_structure": [1, 2, 1], "name": "tiny", "step": 10, "last_layer_dropout": False,
    }
    path = tmp_path / "tiny.pt"
    torch.save(data, path)
    return path, data


def capture_inputs(unet: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        def hook(module, args, out) -> None:  # a forward hook sees the input after the pre-hooks
            seen.setdefault(name, args[0].detach().clone())
        return hook

    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_k")):
            handles.append(module.register_forward_hook(keep(name)))
    return seen, handles


def test_hypernetwork_changes_k_and_v_inputs_by_its_networks(hypernetwork_file) -> None:
    path, data = hypernetwork_file
    hypernetwork = load_hypernetwork(path)
    assert set(hypernetwork.layers) == {CONTEXT}
    unet = tiny_unet("sd1", seed=0, context_dim=CONTEXT)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300.0]), torch.randn(1, 5, CONTEXT, generator=g)
    with torch.no_grad():
        base = unet(x, t, c)
    k_net, v_net = data[CONTEXT]
    for strength in (1.0, -0.7):
        seen, handles = capture_inputs(unet)
        with torch.no_grad(), patched({"unet": unet}, [((HypernetworkPatch(hypernetwork),), strength)]):
            out = unet(x, t, c)
        for handle in handles:
            handle.remove()
        k_name = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
        assert torch.allclose(seen[k_name], c + strength * by_hand(k_net, c), atol=1e-5)
        assert torch.allclose(seen[k_name.replace("to_k", "to_v")], c + strength * by_hand(v_net, c), atol=1e-5)
        assert not torch.allclose(out, base, atol=1e-4)
    # hooks are gone after sampling: the model computes what it did before
    assert all(not m._forward_pre_hooks for m in unet.modules())
    with torch.no_grad():
        assert torch.equal(unet(x, t, c), base)


def test_strength_zero_is_the_identity(hypernetwork_file) -> None:
    path, _ = hypernetwork_file
    unet = tiny_unet("sd1", seed=0, context_dim=CONTEXT)
    g = torch.Generator().manual_seed(1)
    x, t, c = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300.0]), torch.randn(1, 5, CONTEXT, generator=g)
    with torch.no_grad():
        base = unet(x, t, c)
        with patched({"unet": unet}, [((HypernetworkPatch(load_hypernetwork(path)),), 0.0)]):
            assert torch.equal(unet(x, t, c), base)
            assert all(not m._forward_pre_hooks for m in unet.modules())


def test_a_width_of_the_image_tokens_applies_to_self_attention(tmp_path: Path) -> None:
    """As in A1111 and ComfyUI, an entry for a channel width also changes self-attention's k / v."""
    tensors = mlp_tensors(32, 3)
    torch.save({32: [tensors, tensors], "activation_func": "relu", "is_layer_norm": True}, tmp_path / "w.pt")
    unet = tiny_unet("sd1", seed=0, context_dim=CONTEXT)
    seen_base, handles = capture_inputs(unet)
    g = torch.Generator().manual_seed(2)
    x, t, c = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300.0]), torch.randn(1, 5, CONTEXT, generator=g)
    with torch.no_grad():
        unet(x, t, c)
    for handle in handles:
        handle.remove()
    seen, handles = capture_inputs(unet)
    with torch.no_grad(), patched({"unet": unet}, [((HypernetworkPatch(load_hypernetwork(tmp_path / "w.pt")),), 1.0)]):
        unet(x, t, c)
    name = "input_blocks.1.1.transformer_blocks.0.attn1.to_k"
    assert torch.allclose(seen[name], seen_base[name] + by_hand(tensors, seen_base[name]), atol=1e-5)
    cross = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    assert torch.equal(seen[cross], c)  # no 48-wide entry: cross-attention untouched


def test_safetensors_layout_and_bad_files(tmp_path: Path, hypernetwork_file) -> None:
    from safetensors.torch import save_file

    _, data = hypernetwork_file
    flat = {f"{CONTEXT}.{i}.{k}": v for i in (0, 1) for k, v in data[CONTEXT][i].items()}
    save_file(flat, str(tmp_path / "h.safetensors"), metadata={"activation_func": "relu", "is_layer_norm": "true"})
    loaded = load_hypernetwork(tmp_path / "h.safetensors")
    c = torch.randn(2, 3, CONTEXT)
    with torch.no_grad():
        assert torch.allclose(loaded.layers[CONTEXT][0](c), by_hand(data[CONTEXT][0], c), atol=1e-5)
    torch.save({"activation_func": "relu"}, tmp_path / "empty.pt")
    with pytest.raises(HypernetworkError, match="no per-width networks"):
        load_hypernetwork(tmp_path / "empty.pt")
    torch.save({CONTEXT: data[CONTEXT], "activation_func": "nonsense"}, tmp_path / "act.pt")
    with pytest.raises(HypernetworkError, match="activation_func 'nonsense' is unknown"):
        load_hypernetwork(tmp_path / "act.pt")
