"""The speed options (--weight-dtype, --compile, --threads) from the CLI to the loaders, and the cold
start: without --compile, loading and sampling never import the compiler stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.settings import Settings
from nodes.loaders import nodes as loader_nodes
from nodes.runtime import Runtime
from sgm.devices import SMALL_MODEL_PARAMETERS, cpu_threads_for
from sgm.nets.compile import compiled_forward
from sgm.nets.quant import QuantConv2d, QuantLinear
from tests.sgm.model_factories import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
COMPILER_STACK = ("torch._dynamo", "torch._inductor", "sympy")


def test_sampling_without_compile_imports_no_compiler_stack(tmp_path: Path) -> None:
    """``main.py sample`` on the embedded model (load + text + 2 sampler steps + decode + PNG) in a
    fresh process: the compiler stack (about 2 s of imports) stays out. The int8 run checks that
    quantizing does not pull it in either."""
    code = (
        "import sys, main\n"
        "for extra in ([], ['--weight-dtype', 'int8']):\n"
        f"    rc = main.main(['sample', '--prompt', 'a red circle', '--steps', '2', '--seed', '1', '--quiet',"
        f" '--out', {str(tmp_path)!r}, *extra])\n"
        "    assert rc == 0, rc\n"
        f"print(sorted(m for m in {COMPILER_STACK!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert len(list(tmp_path.glob("*.png"))) == 2


def _loaders(runtime: Runtime) -> dict[str, object]:
    return {spec.id: spec for spec in loader_nodes(runtime)}


def test_load_checkpoint_stores_the_unet_as_asked_and_the_setting_is_the_default(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "sd1.safetensors", "sd1")
    runtime = Runtime(Settings.for_root(tmp_path, extra={"weight_dtype": "fp8_e5m2"}), device="cpu")
    load = _loaders(runtime)["LoadCheckpoint"].function
    model, clip, vae = load(ckpt_name="sd1.safetensors", weight_dtype="int8")
    layers = [m for m in model.unet.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    assert layers and all(m.weight.dtype == torch.int8 for m in layers)
    assert not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in vae.vae.modules())  # only the UNet
    by_setting, _, _ = load(ckpt_name="sd1.safetensors", weight_dtype="default")  # defers to --weight-dtype
    assert next(m for m in by_setting.unet.modules() if isinstance(m, QuantLinear)).weight.dtype == torch.float8_e5m2
    assert by_setting.unet is not model.unet and runtime.models.loads == 2  # one cache entry per storage


def test_bad_weight_dtype_settings_and_inputs_are_errors_that_list_the_choices(tmp_path: Path) -> None:
    runtime = Runtime(Settings.for_root(tmp_path, extra={"weight_dtype": "fp4"}), device="cpu")
    with pytest.raises(ValueError, match=r"settings weight_dtype \(--weight-dtype\) 'fp4' is not one of default, "
                                         r"fp8_e4m3fn, fp8_e5m2, int8"):
        runtime.weight_dtype()
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "sd1.safetensors", "sd1")
    load = _loaders(Runtime(Settings.for_root(tmp_path), device="cpu"))["LoadCheckpoint"].function
    with pytest.raises(ValueError, match=r"LoadCheckpoint: weight_dtype 'fp8_e4m3fn_fast' is not one of .*"
                                         r"fp8_e4m3fn_fast is fp8_e4m3fn here"):
        load(ckpt_name="sd1.safetensors", weight_dtype="fp8_e4m3fn_fast")
    with pytest.raises(ValueError, match="settings compile .* 'fastest' is not one of default, reduce-overhead"):
        Runtime(Settings.for_root(tmp_path, extra={"compile": "fastest"})).compile_options()


def test_the_cli_checks_the_speed_options_before_importing_torch() -> None:
    code = ("import sys, main\n"
            "parser = main.build_parser('sample')\n"
            "args = parser.parse_args(['sample', '--prompt', 'x', '--compile', '--weight-dtype', 'int8',\n"
            "                          '--preview-method', 'taesd'])\n"
            "print(main.speed_settings(args), 'torch' in sys.modules)\n"
            "parser.parse_args(['sample', '--prompt', 'x', '--weight-dtype', 'fp4'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == ("{'threads': 'auto', 'compile': 'default', 'weight_dtype': 'int8', "
                                     "'preview_method': 'taesd'} False")
    assert result.returncode == 2
    assert "--weight-dtype: invalid choice: 'fp4' (choose from 'default', 'fp8_e4m3fn', 'fp8_e5m2', 'int8')" \
        in result.stderr


def test_compile_setting_and_node_give_a_compiled_copy_sharing_the_weights(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "sd1.safetensors", "sd1")
    runtime = Runtime(Settings.for_root(tmp_path, extra={"compile": "reduce-overhead"}), device="cpu")
    specs = _loaders(runtime)
    model, _, _ = specs["LoadCheckpoint"].function(ckpt_name="sd1.safetensors")
    forward = compiled_forward(model.unet)
    assert forward is not None and forward.options.mode.value == "reduce-overhead"
    assert forward.options.cache_dir == tmp_path / "user" / "compile-cache"
    recompiled = specs["CompileModel"].function(model=model, mode="default")
    assert compiled_forward(recompiled.unet).options.mode.value == "default"
    assert compiled_forward(recompiled.unet).module is forward.module  # compiled from the loaded model
    assert recompiled.unet.input_blocks is model.unet.input_blocks and recompiled.name == model.name
    assert compiled_forward(model.unet).options.mode.value == "reduce-overhead"  # the input is unchanged


def test_small_models_get_one_cpu_thread_when_the_cli_asks_for_the_policy(tmp_path: Path) -> None:
    assert cpu_threads_for(4_000_000, 16) == 1 and cpu_threads_for(SMALL_MODEL_PARAMETERS, 16) == 16
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "sd1.safetensors", "sd1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        untouched = Runtime(Settings.for_root(tmp_path), device="cpu")  # no "threads" setting: tests, embedding
        _loaders(untouched)["LoadCheckpoint"].function(ckpt_name="sd1.safetensors")
        assert torch.get_num_threads() == 2
        policy = Runtime(Settings.for_root(tmp_path, extra={"threads": "auto"}), device="cpu")
        _loaders(policy)["LoadCheckpoint"].function(ckpt_name="sd1.safetensors")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

