"""ComfyUI's Lotus node (LotusConditioning) and the Lotus-D model setup UNETLoader applies.

Lotus-D (``sgm.io.lotus``) is an SD 2 UNet fine-tuned to turn an image latent into its depth
map's latent in one x0-predicting step at t = 999. ComfyUI's template runs it as
UNETLoader -> BasicGuider(LotusConditioning) -> SamplerCustomAdvanced(DisableNoise, euler,
BasicScheduler 1 step with SetFirstSigma 999) on the VAEEncode'd image, then VAEDecode and
ImageInvert. What makes that work here:

- ``lotus_model``: UNETLoader gives a Lotus UNet (told by its 4-wide vector input) the family
  ``"lotus"`` and the img-to-img model sampling (c_in 1, D = F), so the sampler feeds it the
  image latent as it is and takes its output as the result.
- LotusConditioning: the empty prompt's unpadded SD 2 encoding (1, 2, 1024), read from
  ``models/text_encoders/lotus-null-prompt.safetensors`` (Lotus files carry no text encoder;
  ``sgm.io.lotus.null_prompt_embedding`` computes the file's content from an SD 2.x text
  encoder), with the depth task's switcher vector as the condition's ``y`` (1, 4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from engine.api import NodeSpec, Out, node
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, file_fingerprint
from nodes.values import ModelValue

NULL_PROMPT_KINDS = ("text_encoders",)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    def null_prompt_path() -> Path | None:
        from sgm.io.lotus import NULL_PROMPT_FILE

        return models.resolve(NULL_PROMPT_KINDS, NULL_PROMPT_FILE)

    @node("LotusConditioning", display_name="LotusConditioning", category="conditioning/lotus", compat=COMPAT,
          fingerprint=lambda **_: file_fingerprint(null_prompt_path()))
    def lotus_conditioning() -> Out(conditioning="CONDITIONING"):
        """Lotus-D's fixed conditioning: the empty prompt's unpadded SD 2 text encoding (1, 2, 1024), from
        models/text_encoders/lotus-null-prompt.safetensors, and the depth task's switcher vector."""
        from sgm.io.lotus import NULL_PROMPT_FILE, load_null_prompt, task_embedding
        from sgm.text.conditioning import Condition

        path = null_prompt_path()
        if path is None:
            folders = ", ".join(str(f.path) for f in models.folders(NULL_PROMPT_KINDS[0]))
            raise FileNotFoundError(
                f"LotusConditioning: {NULL_PROMPT_FILE} not found in the text encoder folders ({folders}); it holds "
                "SD 2's text encoding of the empty prompt, [BOS, EOS] unpadded, shape (1, 2, 1024): write it with "
                "sgm.io.lotus.save_null_prompt(path, null_prompt_embedding(<an SD 2.x checkpoint's text "
                "conditioner>))")
        context = load_null_prompt(path)  # (1, 2, C)
        return [Condition(context=context, y=task_embedding())]

    return [lotus_conditioning]


def lotus_model(model: ModelValue) -> ModelValue:
    """``model`` set up for Lotus-D when its UNet is one (family "lotus", img-to-img sampling on
    its discrete schedule); any other model unchanged."""
    from sgm.io.lotus import LOTUS_FAMILY, is_lotus_unet, lotus_model_sampling

    if not is_lotus_unet(model.unet):
        return model
    return replace(model, family=LOTUS_FAMILY, model_sampling=lotus_model_sampling(model.model_sampling))

