"""InstructPix2Pix through KSampler: an 8-channel SD 1.x UNet samples with the input image's latent
beside the noisy one (InstructPixToPixConditioning -> KSampler), on a tiny stand-in checkpoint."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from engine.api import NodeContext
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from sgm.io.checkpoints import save_checkpoint
from tests.sgm.model_factories import tiny_unet, tiny_vae, unet_metadata_hints
from tests.workflows.model_files import TEXT_WIDTH, text_state_dict, write_byte_tokenizer


def test_an_8_channel_unet_samples_with_the_input_image(tmp_path: Path) -> None:
    checkpoints = tmp_path / "models" / "checkpoints"
    write_byte_tokenizer(checkpoints / "tokenizer")
    unet = tiny_unet("sd1", seed=3, in_channels=8, context_dim=TEXT_WIDTH)
    save_checkpoint(checkpoints / "ip2p.safetensors", unet=unet, vae=tiny_vae(seed=4),
                    text_state_dict=text_state_dict("sd1", 3),
                    metadata={"latentflow.config": json.dumps({"unet": unet_metadata_hints("sd1")})})
    runtime = Runtime(Settings.for_root(tmp_path, extra={"dtype": "fp32"}), device="cpu")
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    model, clip, vae = nodes["CheckpointLoaderSimple"](ckpt_name="ip2p.safetensors")
    assert model.is_pix2pix and not model.is_inpaint
    positive = nodes["CLIPTextEncode"](text="make it red", clip=clip)
    negative = nodes["CLIPTextEncode"](text="", clip=clip)
    ctx = NodeContext("test", threading.Event(), lambda node_id, progress: None)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        pos, neg, latent = nodes["InstructPixToPixConditioning"](positive=positive, negative=negative, vae=vae,
                                                                 pixels=pixels)
        (out,) = [nodes["KSampler"](model=model, seed=2, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal",
                                    denoise=1.0, positive=pos, negative=neg, latent_image=latent, ctx=ctx)]
        return out.samples

    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(1, 64, 64, 3, generator=g), torch.rand(1, 64, 64, 3, generator=g)
    a, again, b = run(first), run(first), run(second)
    assert a.shape == (1, 4, 8, 8)
    assert torch.equal(a, again)  # seeded
    assert (a - b).abs().max() > 1e-3  # the input image reaches the UNet
