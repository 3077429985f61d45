"""torch.compile for the UNet (sgm.nets.compile): shape buckets, shared weights, eager fallback.

The mechanics are tested with dynamo's tracing and a counting backend (no C++ compiler needed);
inductor's generated code is measured in bench/compile_cpu.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from sgm.io.lora import kohya_unet_names, match_lora, patched
from sgm.nets.compile import (CompileMode, CompileOptions, compile_model, compiled_copy, compiled_forward,
                              parse_compile_mode)
from sgm.nets.speed_names import COMPILE_MODE_CHOICES
from tests.sgm.model_factories import tiny_unet


class CountingBackend:
    """A torch.compile backend that runs the traced graph as it is and counts compilations."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return graph_module.forward


def inputs(size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return (torch.randn(batch, 4, size, size, generator=generator), torch.full((batch,), 500.0),
            torch.randn(batch, 7, 32, generator=generator))  # x (B, 4, h, w), t (B,), context (B, S, 32)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    yield
    torch._dynamo.reset()  # compiled code is cached per code object: keep tests apart


def test_compiled_copy_shares_weights_leaves_the_original_eager_and_matches_it() -> None:
    unet = tiny_unet("sd1")
    backend = CountingBackend()
    compiled = compile_model(unet, CompileOptions(backend=backend))
    assert compiled is not unet and compiled.input_blocks is unet.input_blocks
    assert compiled.time_embed[0].weight is unet.time_embed[0].weight
    assert "forward" not in unet.__dict__ and compiled_forward(unet) is None
    with torch.no_grad():
        x, t, context = inputs(8)
        assert torch.allclose(compiled(x, t, context), unet(x, t, context), atol=1e-6)
    assert backend.graphs == 1  # one graph: no graph breaks (interrupt checks vanish under compile)
    # weights are graph inputs: a LoRA patched in place is seen by the compiled graph
    name = "input_blocks.1.1.proj_in"
    stem = kohya_unet_names(unet)[name]
    weight = unet.get_submodule(name).weight
    lora = {f"{stem}.lora_down.weight": torch.ones(2, *weight.shape[1:]) * 0.1,
            f"{stem}.lora_up.weight": torch.ones(weight.shape[0], 2, *weight.shape[2:]) * 0.1}
    with torch.no_grad(), patched({"unet": compiled}, [(match_lora(lora, compiled).for_module("unet"), 1.0)]):
        patched_out = compiled(x, t, context)
        eager_patched = unet(x, t, context)
    assert torch.allclose(patched_out, eager_patched, atol=1e-6)
    assert not torch.allclose(patched_out, unet(x, t, context), atol=1e-3)


def test_the_first_sizes_get_static_graphs_and_later_sizes_share_one_dynamic_graph() -> None:
    unet = tiny_unet("sd1")
    backend = CountingBackend()
    compiled = compile_model(unet, CompileOptions(backend=backend, max_static_shapes=1))
    forward = compiled_forward(compiled)
    with torch.no_grad():
        for size in (8, 8):
            compiled(*inputs(size))
        assert (backend.graphs, forward.compiles, len(forward.static)) == (1, 1, 1)
        compiled(*inputs(16))  # past the static budget: the dynamic graph
        assert forward.compiles == 2 and forward.dynamic is not None
        graphs = backend.graphs
        for size in (24, 32):
            out = compiled(*inputs(size))
            assert out.shape == (2, 4, size, size)
        assert backend.graphs == graphs and forward.compiles == 2  # new sizes: no recompilation
        x, t, context = inputs(32)
        assert torch.allclose(compiled(x, t, context), unet(x, t, context), atol=1e-5)


def _raising_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
    raise RuntimeError("no C++ compiler found (test)")


def test_a_failing_compiler_falls_back_to_eager_once_with_a_message_that_says_why(caplog) -> None:
    unet = tiny_unet("sd1")
    messages: list[str] = []
    compiled = compile_model(unet, CompileOptions(backend=_raising_backend), on_fallback=messages.append)
    x, t, context = inputs(8)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="sgm.nets.compile"):
        out = compiled(x, t, context)
        again = compiled(*inputs(16))
    assert torch.equal(out, unet(x, t, context).detach()) and again.shape == (2, 4, 16, 16)
    reason = compiled_forward(compiled).fallback_reason
    assert reason is not None and "no C++ compiler found (test)" in reason and "uncompiled (eager)" in reason
    assert "[(2, 4, 8, 8), (2,), (2, 7, 32)]" in reason and "without --compile" in reason
    assert messages == [reason] and [r.getMessage() for r in caplog.records] == [reason]
    assert compiled_forward(compiled).compiles == 1  # eager for good: no second attempt


def test_torch_compile_refusing_outright_also_falls_back(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("Python 3.99 is not supported by torch.compile (test)")

    monkeypatch.setattr(torch, "compile", refuse)
    unet = tiny_unet("sd1")
    compiled = compile_model(unet, CompileOptions())
    x, t, context = inputs(8)
    with torch.no_grad():
        assert torch.equal(compiled(x, t, context), unet(x, t, context))
    assert "Python 3.99 is not supported" in compiled_forward(compiled).fallback_reason


def test_an_error_of_the_model_itself_is_raised_not_taken_for_a_compiler_failure() -> None:
    unet = tiny_unet("sd1")
    compiled = compile_model(unet, CompileOptions(backend=CountingBackend()))
    x, t, _ = inputs(8)
    with torch.no_grad(), pytest.raises(RuntimeError, match="shape|size|mat1"):
        compiled(x, t, torch.randn(2, 7, 33))  # context width 33, the model takes 32
    assert compiled_forward(compiled).fallback_reason is None


def test_one_compiled_copy_per_model_and_options_and_modes_are_checked(tmp_path) -> None:
    unet = tiny_unet("sd1")
    options = CompileOptions(backend="eager", cache_dir=tmp_path / "cache")
    first = compiled_copy(unet, options)
    assert compiled_copy(unet, CompileOptions(backend="eager", cache_dir=tmp_path / "cache")) is first
    assert compiled_copy(first, options) is first  # a compiled copy recompiles from its original
    other = compiled_copy(unet, CompileOptions(backend="eager", mode="reduce-overhead"))
    assert other is not first and compiled_forward(other).options.mode is CompileMode.REDUCE_OVERHEAD
    with pytest.raises(ValueError, match="compiled already"):
        compile_model(first)
    # on the CPU, reduce-overhead compiles without CUDA graphs (they need CUDA and fixed shapes)
    assert CompileMode.REDUCE_OVERHEAD.without_cuda_graphs() is CompileMode.DEFAULT
    assert COMPILE_MODE_CHOICES == tuple(m.value for m in CompileMode)
    with pytest.raises(ValueError, match="--compile 'fast' is not one of default, reduce-overhead"):
        parse_compile_mode("fast", "--compile")
