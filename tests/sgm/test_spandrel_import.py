"""spandrel imports where torchvision cannot: the stand-in offers the three names spandrel's
registry imports, and its functions say what is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sgm.io.upscalers import _torchvision_stand_in, import_spandrel


def test_the_stand_in_has_spandrel_s_names_and_its_functions_explain() -> None:
    modules = _torchvision_stand_in()
    functional = modules["torchvision.transforms.functional"]
    assert functional.InterpolationMode.BILINEAR.value == "bilinear"
    assert modules["torchvision"].transforms.functional is functional
    for function in (functional.rotate, functional.normalize):
        with pytest.raises(ModuleNotFoundError, match="needs torchvision"):
            function(None)


def test_spandrel_imports_and_loads_without_a_working_torchvision() -> None:
    """In a fresh interpreter where ``import torchvision`` raises (as a CUDA torchvision beside a
    CPU torch does), spandrel still imports and reads an ESRGAN-compact state dict."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def broken(name, *a, **k):\n"
        "    if name == 'torchvision' or name.startswith('torchvision.'):\n"
        "        if 'latentflow' not in str(getattr(sys.modules.get('torchvision'), '__doc__', '')):\n"
        "            raise RuntimeError('operator torchvision::nms does not exist')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = broken\n"
        "from sgm.io.upscalers import import_spandrel, upscale_model_from_state_dict\n"
        "spandrel = import_spandrel()\n"
        "from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact\n"
        "net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)\n"
        "model = upscale_model_from_state_dict(net.state_dict(), 'x')\n"
        "print(model.descriptor.scale, 'stand-in' in sys.modules['torchvision'].__doc__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "True"]  # loaded as a 2x model, beside the stand-in
    assert import_spandrel().__name__ == "spandrel"
