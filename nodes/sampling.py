"""Sampling nodes: the one-node ``SampleLatent`` and its parts (guider, schedule, sampler).

(ComfyUI's ``KSampler`` is an adapter over ``SampleLatent`` in ``nodes.comfy``.)

The work is ``sgm.sampling.guiders.GuidedDenoiser`` + ``sgm.sampling.schedules.compute_sigmas`` +
``sgm.sampling.sample.sample``; these nodes only connect them to the values between nodes,
report each step as progress (with a cheap latent preview) and stop when the run is
cancelled.
"""

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from engine.api import Bool, Cancelled, Choice, Context, Float, Int, NodeContext, NodeSpec, Out, node
from nodes.runtime import Runtime
from nodes.values import LatentValue, ModelValue

logger = logging.getLogger(__name__)

def sampler_names() -> list[str]:
    """The keys of ``sgm.sampling.samplers.SAMPLERS`` in ComfyUI's order (no torch import)."""
    from sgm.sampling.names import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


def scheduler_names() -> list[str]:
    """The keys of ``sgm.sampling.schedules.SCHEDULERS`` in ComfyUI's order (no torch import)."""
    from sgm.sampling.names import SCHEDULER_NAMES

    return list(SCHEDULER_NAMES)


SEED_MAX = 2**64 - 1
PREVIEW_SIZE = 256
PREVIEW_INTERVAL = 0.25  # seconds between live previews


@dataclass(frozen=True, eq=False)
class GuiderValue:
    """GUIDER: what ``GuidedDenoiser`` needs, built when the latent's shape is known."""

    model: ModelValue
    positive: tuple[Any, ...]
    negative: tuple[Any, ...]
    cfg: float
    # Dual CFG (``sgm.sampling.guidance_extra.dual_cfg``): a middle prompt between positive and
    # negative, the scale from negative to middle, and the style; None = plain CFG.
    middle: tuple[Any, ...] | None = None
    cfg_middle: float = 1.0
    dual_style: str = "regular"


@dataclass(frozen=True)
class NoiseValue:
    """NOISE: the initial noise of a run, seeded by the seed rule (``sgm.sampling.sample``), or
    none (``seed`` None: sample the latent as it is, for one that is already noisy)."""

    seed: int | None


@dataclass(frozen=True)
class SamplerValue:
    """SAMPLER: a sampler name and its options."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()


def _prepare_conditions(conditions: tuple[Any, ...], model: ModelValue, height: int, width: int,
                        what: str, seed: int = 0) -> list[Any]:
    """Give SDXL conditions their vector ``y`` (size = the image being made), SD 2.1 unCLIP
    conditions theirs (the noise-augmented image embeddings of ``Condition.unclip``), and drop
    ``y`` for models that take none. With unCLIP embeddings an SDXL condition's pooled text is
    replaced by them (Revision). ``seed``: the sampling seed (the embedding noise derives from it)."""
    from sgm.sampling.area_fraction import resolve_areas

    downscale = model.latent_format.downscale  # ConditioningSetAreaPercentage: fractions of this latent
    conditions = tuple(resolve_areas(conditions, height // downscale, width // downscale))
    if not model.needs_vector:
        return [c if c.y is None else replace(c, y=None) for c in conditions]
    from sgm.sampling import unclip as uc
    from sgm.text.sdxl_conditioning import SIZE_EMBED_DIM, sdxl_refiner_vector, sdxl_vector

    adm = int(getattr(model.unet, "adm_in_channels", 0) or 0)
    noise_seed = seed + uc.NOISE_SEED_OFFSET
    if model.family == "lotus":  # the task switcher's vector, whatever the conditioning brought
        from sgm.io.lotus import task_embedding

        vector = task_embedding()
        return [replace(c, y=vector.expand(c.context.shape[0], -1)) for c in conditions]
    if model.family.startswith("sd2"):  # an SD 2.x UNet with a vector input: SD 2.1 unCLIP
        dim = uc.unclip_adm_dim(adm)
        augmentation = uc.EmbeddingNoiseAugmentation(dim)
        # without an image the model gets zeros, as ComfyUI gives it
        try:
            return [replace(c, y=uc.unclip_vector(c.unclip, augmentation, seed=noise_seed) if c.unclip
                            else uc.no_image_vector(adm)) for c in conditions]
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from error
    out = []
    for cond in conditions:
        if cond.unclip:  # SDXL Revision: the image embeddings' mix stands in for the pooled text
            numbers = 5 if model.family.startswith("sdxl-refiner") else 6  # size/crop(/score) features
            dim = int(cond.pooled.shape[-1]) if cond.pooled is not None else adm - numbers * SIZE_EMBED_DIM
            try:
                vector = uc.unclip_vector(cond.unclip, uc.EmbeddingNoiseAugmentation(dim), seed=noise_seed,
                                          merge_noise_augmentation=uc.REVISION_MERGE_AUGMENTATION)
            except ValueError as error:
                raise ValueError(f"{what}: SDXL Revision: {error}") from error
            pooled = vector[:, :dim]  # (1, dim)
            if cond.y is not None:
                y = cond.y.clone()
                y[:, :dim] = pooled.to(y)
                cond = replace(cond, y=y)
            cond = replace(cond, pooled=pooled.expand(cond.context.shape[0], -1))
        if cond.y is None:
            if cond.pooled is None:
                raise ValueError(
                    f"{what}: this {model.family} model needs pooled text conditioning, but the "
                    "conditioning has none; encode the prompt with this model's text encoder")
            if model.family.startswith("sdxl-refiner"):
                y = sdxl_refiner_vector(cond.pooled, original_size=(height, width))
            else:
                y = sdxl_vector(cond.pooled, original_size=(height, width), target_size=(height, width))
            cond = replace(cond, y=y)
        out.append(cond)
    return out


def _model_latent(latent: LatentValue, model: ModelValue) -> Any:
    """The latent to sample: an empty latent is remade in the model's latent format."""
    import torch

    fmt = model.latent_format
    samples = latent.samples
    if latent.empty and (samples.shape[1] != fmt.channels or (latent.width and latent.width // fmt.downscale
                                                               != samples.shape[-1])):
        width = latent.width or samples.shape[-1] * 8
        height = latent.height or samples.shape[-2] * 8
        samples = torch.zeros(samples.shape[0], fmt.channels, height // fmt.downscale, width // fmt.downscale)
    if samples.shape[1] != fmt.channels:
        raise ValueError(
            f"the latent has {samples.shape[1]} channels but the model {model.name!r} ({model.family}) "
            f"works on {fmt.channels}; encode the image with this model's VAE")
    return samples


def _inpaint_concat(latent: LatentValue, samples: Any, positive: Any = ()) -> Any:
    """The inpainting UNet's extra channels: the latent's noise mask, else the ``concat_mask`` a
    positive condition carries (InpaintModelConditioning with noise_mask off), with the masked
    image's latent; neither: repaint everything (txt2img with an inpainting model)."""
    import torch

    from sgm.sampling.guiders import make_inpaint_concat

    mask = latent.noise_mask
    if mask is None:
        mask = next((c.extra["concat_mask"] for c in positive if "concat_mask" in (c.extra or {})), None)
    if mask is None:
        mask = torch.ones(1, 1, *samples.shape[-2:])
        return make_inpaint_concat(mask, torch.zeros_like(samples))
    masked = latent.masked_latent if latent.masked_latent is not None else torch.zeros_like(samples)
    return make_inpaint_concat(mask.float(), masked)


def _preview(denoised: Any, family: str, method: str, decoder: Any = None) -> Any:
    """A PIL preview of the first item of ``denoised`` (scaled latents) by ``method`` (see
    ``Runtime.preview_method``); ``decoder``: the TAESD decoder when the method resolved to taesd."""
    from sgm.sampling.latent_preview import latent_preview_image, taesd_preview_image

    if method == "none" or denoised.shape[1] != 4:
        return None
    if decoder is not None:
        import torch.nn.functional as F

        latent = denoised[:1]
        largest = PREVIEW_SIZE // 8  # TAESD's cost grows with its output: decode no more than is shown
        if max(latent.shape[-2:]) > largest:
            scale = largest / max(latent.shape[-2:])
            latent = F.interpolate(latent.float(), size=[max(1, round(s * scale)) for s in latent.shape[-2:]],
                                   mode="area")
        return taesd_preview_image(latent, decoder, max_size=PREVIEW_SIZE)
    try:
        return latent_preview_image(denoised[:1], family, max_size=PREVIEW_SIZE)
    except ValueError:  # a family without fitted factors: SD's are a fair approximation
        return latent_preview_image(denoised[:1], "sd1", max_size=PREVIEW_SIZE)


def _preview_decoder(runtime: Runtime, method: str, family: str, node_id: str) -> Any:
    """The TAESD decoder previews use, or None for latent2rgb: ``taesd`` wants one (and falls back to
    latent2rgb with a warning when its file is missing); ``auto`` uses one where its file is there and
    the model runs on an accelerator (on a CPU a TAESD preview costs as much as a few sampler steps)."""
    if method not in ("taesd", "auto") or (method == "auto" and runtime.models.device.type == "cpu"):
        return None
    family = "sdxl" if family.startswith("sdxl") else "sd1" if family.startswith(("sd1", "sd2")) else family
    decoder = runtime.preview_decoder(family)
    if decoder is None and method == "taesd":
        logger.warning("%s: --preview-method taesd but no TAESD decoder for %s latents in models/vae_approx/ "
                       "(taesd_decoder.safetensors for SD 1.x/2.x, taesdxl_decoder.safetensors for SDXL); "
                       "previewing with latent2rgb", node_id, family)
    return decoder


def run_sampler(runtime: Runtime, guider: GuiderValue, sampler: SamplerValue, sigmas: Any, latent: LatentValue,
                seed: int, add_noise: bool, ctx: NodeContext, node_id: str) -> LatentValue:
    """Sample ``latent`` along ``sigmas``: the shared body of SampleLatent and Sampler."""
    return run_sampler_with_denoised(runtime, guider, sampler, sigmas, latent, seed, add_noise, ctx, node_id)[0]


def _make_denoiser(guider: GuiderValue, positive: list[Any], negative: list[Any], middle: list[Any] | None,
                   concat: Any) -> Any:
    """The guided denoiser for a GUIDER: plain CFG, CFG with timestep-ranged conditions, or dual CFG."""
    from sgm.sampling.guidance_extra import DualCFGDenoiser, TimestepRangeDenoiser, has_timestep_ranges
    from sgm.sampling.guiders import GuidedDenoiser

    model = guider.model
    if middle is not None:
        denoiser: Any = DualCFGDenoiser(model.unet, model.model_sampling, positive, middle, negative, guider.cfg,
                                        guider.cfg_middle, guider.dual_style,
                                        inpaint_concat=concat)  # type: ignore[arg-type]
    else:
        kind = TimestepRangeDenoiser if has_timestep_ranges(positive, negative) else GuidedDenoiser
        denoiser = kind(model.unet, model.model_sampling, positive, negative or None, cfg=guider.cfg,
                        inpaint_concat=concat, cfg_rescale=model.cfg_rescale)
    if not model.guidance_patches:
        return denoiser
    from sgm.sampling.guidance_patches import GuidanceInputs, apply_guidance_patches

    # cfg 1 without a middle prompt: the guided estimate is the positive prompt's own
    inputs = GuidanceInputs(model.unet, model.model_sampling, positive, concat,
                            guided_is_cond=middle is None and (guider.cfg == 1.0 or not negative), negative=negative)
    return apply_guidance_patches(denoiser, model.guidance_patches, inputs)


def _sample_function(model: ModelValue, latent: LatentValue) -> Any:
    """``sgm.sampling.sample.sample``, or its Differential Diffusion form for a model patched by
    DifferentialDiffusion sampling a latent with a noise mask (same arguments)."""
    from sgm.sampling.sample import sample

    strength = model.differential_diffusion
    if strength is None or latent.noise_mask is None:
        return sample
    from sgm.sampling.differential_diffusion import sample_differential

    def run(denoiser: Any, sampler: Any, sigmas: Any, samples: Any, seed: int, *, noise_mask: Any,
            **options: Any) -> Any:
        return sample_differential(denoiser, sampler, sigmas, samples, seed, noise_mask, strength, **options)

    return run


def run_sampler_with_denoised(runtime: Runtime, guider: GuiderValue, sampler: SamplerValue, sigmas: Any,
                              latent: LatentValue, seed: int, add_noise: bool, ctx: NodeContext,
                              node_id: str) -> tuple[LatentValue, LatentValue]:
    """``run_sampler`` that also gives the last step's denoised estimate (x0) as a latent (the
    sampled latent itself where no step ran)."""
    import torch

    from sgm.io.lora import patched
    from sgm.nets.unet_patches import compute_dtype_applied, unet_patches_applied
    from sgm.sampling.sample import SamplingCancelled

    model = guider.model
    samples = _model_latent(latent, model)
    height = latent.height or samples.shape[-2] * model.latent_format.downscale
    width = latent.width or samples.shape[-1] * model.latent_format.downscale
    positive = _prepare_conditions(guider.positive, model, height, width, node_id, seed)
    negative = _prepare_conditions(guider.negative, model, height, width, node_id, seed)
    middle = None if guider.middle is None else _prepare_conditions(guider.middle, model, height, width, node_id,
                                                                     seed)
    concat = _inpaint_concat(latent, samples, positive) if model.is_inpaint else None
    if model.is_pix2pix:  # InstructPix2Pix: the input image's latent beside the noisy one
        from sgm.sampling.pix2pix import concat_image_of, pix2pix_concat, pix2pix_scale

        concat = pix2pix_concat(concat_image_of(positive), samples, pix2pix_scale(model.family))
    if getattr(sampler.name, "resizes_latent", False) and latent.noise_mask is not None:
        raise ValueError(f"{node_id}: this sampler changes the latent's size, which a noise mask (inpainting) "
                         "cannot follow; sample the masked latent with another sampler, then upscale")
    offset = latent.batch_index[0] if latent.batch_index else 0  # a picked item keeps its seed
    # Items whose indices are not offset, offset + 1, ... (LatentBatch, LatentBatchSeedBehavior fixed)
    # are seeded seed + index each.
    indices = list(latent.batch_index or ())
    seeds = {} if len(indices) != samples.shape[0] or indices == list(range(offset, offset + len(indices))) else {
        "item_seeds": [(seed + index) % 2**64 for index in indices]}

    preview_wanted = ctx.services.get("preview_wanted")  # the server: "does a client watch?"
    last_preview = [float("-inf")]
    preview_method = runtime.preview_method()
    # The TAESD decoder (if previews use one) goes to the device with the UNet; only a server makes previews.
    preview_decoder = (_preview_decoder(runtime, preview_method, model.family, node_id)
                       if preview_wanted is not None and preview_method != "none" else None)

    last_denoised: list[Any] = []

    def on_step(info: Any) -> None:
        last_denoised[:] = [info.denoised]
        # A preview costs a decode-like pass; make one at most every PREVIEW_INTERVAL and only
        # while someone can see it (the last step always gets one: it is what a viewer keeps).
        now = time.monotonic()
        due = now - last_preview[0] >= PREVIEW_INTERVAL or info.step + 1 == info.total
        preview = None
        if due and preview_method != "none" and preview_wanted is not None and preview_wanted():
            preview = _preview(info.denoised, model.family, preview_method, preview_decoder)
            last_preview[0] = now
        ctx.progress(info.step + 1, info.total, preview)

    def work() -> Any:
        # ControlNets, T2I-Adapters and GLIGEN models of the conditions (and the TAESD preview decoder) run
        # beside the UNet, on its device.
        conditions = [*positive, *negative, *(middle or [])]
        controls = list({id(m): m for c in conditions if c.control is not None for m in c.control.models()}.values())
        controls += list({id(c.gligen[0]): c.gligen[0] for c in conditions if c.gligen is not None}.values())
        if preview_decoder is not None:
            controls.append(preview_decoder)
        with runtime.models.use(model.unet, *controls) as device, \
                patched({"unet": model.unet}, [(p.targets, p.strength) for p in model.loras]), \
                unet_patches_applied(model.unet, model.model_sampling, model.block_patches), \
                compute_dtype_applied(model.compute_dtype, device, model.unet):
            denoiser = _make_denoiser(
                guider, [_to(c, device) for c in positive], [_to(c, device) for c in negative],
                None if middle is None else [_to(c, device) for c in middle],
                None if concat is None else concat.to(device))
            with torch.no_grad():
                return _sample_function(model, latent)(
                    denoiser, sampler.name, sigmas.to(device), samples.to(device), (seed + offset) % 2**64,
                    noise_mask=None if latent.noise_mask is None else latent.noise_mask.to(device),
                    sampler_options=dict(sampler.options), callback=on_step,
                    cancel=lambda: ctx.cancelled, add_noise=add_noise, **seeds,
                ).float().cpu()

    try:
        out = runtime.models.retry_on_oom(work, f"{node_id} (sampling)")
    except SamplingCancelled as error:
        raise Cancelled(f"run cancelled while node {ctx.node_id} was sampling") from error
    if out.shape[-2:] != samples.shape[-2:]:  # a sampler that resizes (SamplerLCMUpscale): masks no longer fit
        scale = out.shape[-1] / samples.shape[-1]
        result = LatentValue(out, width=round(width * scale), height=round(height * scale), empty=False)
    else:
        result = replace(latent, samples=out, empty=False, width=width, height=height)
    if not last_denoised:
        return result, result
    return result, replace(result, samples=last_denoised[0].float().cpu())


def _to(cond: Any, device: Any) -> Any:
    moved = {name: getattr(cond, name).to(device) for name in ("context", "pooled", "y", "mask")
             if getattr(cond, name) is not None}
    return replace(cond, **moved)


def nodes(runtime: Runtime) -> list[NodeSpec]:
    @node("SampleLatent", display_name="Sample Latent", category="sampling")
    def sample_latent(
        model: "MODEL",
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        latent: "LATENT",
        seed: Int(min=0, max=SEED_MAX, control_after_generate=True,
                  tooltip="noise seed; batch item i uses seed + i") = 0,
        steps: Int(min=1, max=10000) = 20,
        cfg: Float(min=0.0, max=100.0, step=0.1, round=0.01,
                   tooltip="classifier-free guidance scale (1 = no guidance, faster)") = 7.0,
        sampler_name: Choice(choices=sampler_names) = "euler",
        scheduler: Choice(choices=scheduler_names) = "normal",
        denoise: Float(min=0.0, max=1.0, step=0.01,
                       tooltip="1 = from pure noise; less keeps more of the input latent (img2img)") = 1.0,
        ctx: Context = None,
    ) -> Out(latent="LATENT"):
        """Denoise a latent with a model, prompts, sampler and schedule: the common case in one node."""
        from sgm.sampling.schedules import compute_sigmas

        sigmas = compute_sigmas(scheduler, model.model_sampling, steps, denoise)
        guider = GuiderValue(model, tuple(positive), tuple(negative), float(cfg))
        return run_sampler(runtime, guider, SamplerValue(sampler_name), sigmas, latent, seed, True, ctx,
                           "SampleLatent")

    @node("UNetDenoise", display_name="Guided Denoiser (CFG)", category="sampling/custom")
    def unet_denoise(
        model: "MODEL",
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        cfg: Float(min=0.0, max=100.0, step=0.1, round=0.01) = 7.0,
    ) -> Out(guider="GUIDER"):
        """Model + prompts + guidance scale -> the guided denoiser a Sampler runs."""
        return GuiderValue(model, tuple(positive), tuple(negative), float(cfg))

    @node("Scheduler", display_name="Scheduler (Sigmas)", category="sampling/custom")
    def scheduler_node(
        model: "MODEL",
        scheduler: Choice(choices=scheduler_names) = "normal",
        steps: Int(min=1, max=10000) = 20,
        denoise: Float(min=0.0, max=1.0, step=0.01) = 1.0,
    ) -> Out(sigmas="SIGMAS"):
        """The noise levels to step through; denoise < 1 keeps the tail (img2img)."""
        from sgm.sampling.schedules import compute_sigmas

        return compute_sigmas(scheduler, model.model_sampling, steps, denoise)

    @node("SamplerSelect", display_name="Sampler Select", category="sampling/custom")
    def sampler_select(
        sampler_name: Choice(choices=sampler_names) = "euler",
        eta: Float(min=0.0, max=100.0, step=0.01,
                   tooltip="ancestral/SDE noise amount (where the sampler has it)") = 1.0,
        s_noise: Float(min=0.0, max=100.0, step=0.01, tooltip="noise multiplier (where the sampler has it)") = 1.0,
    ) -> Out(sampler="SAMPLER"):
        """Pick a sampling algorithm; eta and s_noise apply to the samplers that take them."""
        import inspect

        from sgm.sampling.samplers import SAMPLERS

        accepted = inspect.signature(SAMPLERS[sampler_name]).parameters
        options = tuple((k, float(v)) for k, v in (("eta", eta), ("s_noise", s_noise)) if k in accepted)
        return SamplerValue(sampler_name, options)

    @node("Sampler", display_name="Sampler (Custom)", category="sampling/custom")
    def sampler_node(
        guider: "GUIDER",
        sampler: "SAMPLER",
        sigmas: "SIGMAS",
        latent: "LATENT",
        seed: Int(min=0, max=SEED_MAX, control_after_generate=True) = 0,
        add_noise: Bool(tooltip="off to continue from a latent that is already noisy") = True,
        ctx: Context = None,
    ) -> Out(latent="LATENT"):
        """Run a sampler with a guided denoiser along the given sigmas."""
        return run_sampler(runtime, guider, sampler, sigmas, latent, seed, add_noise, ctx, "Sampler")

    return [sample_latent, unet_denoise, scheduler_node, sampler_select, sampler_node]
