"""The choices of the speed options (``--weight-dtype``, ``--compile``, ``--preview-method``), without importing torch.

``main.py`` checks its options against these before torch is imported; a test keeps them equal to
``sgm.nets.quant.WeightDtype`` and ``sgm.nets.compile.CompileMode``.
"""

from __future__ import annotations

WEIGHT_DTYPE_CHOICES: tuple[str, ...] = ("default", "fp8_e4m3fn", "fp8_e5m2", "int8")
COMPILE_MODE_CHOICES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Live previews while sampling (ComfyUI's --preview-method): auto = taesd where its decoder file for the
# model's family is in models/vae_approx, else latent2rgb.
PREVIEW_METHOD_CHOICES: tuple[str, ...] = ("auto", "none", "latent2rgb", "taesd")
