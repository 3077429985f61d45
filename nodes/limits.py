"""Refuse at validation what cannot fit: size estimates for latent and image nodes.

Each built-in node that makes, resizes, samples, encodes or decodes pixels gets a
``NodeSpec.check`` (see ``engine.validation.NodeCheck``): a plain function of its literal
inputs and of the size estimates of the nodes it reads from. It passes a :class:`Size` on
(image pixels and batch) and refuses, with the estimate and the limit in the message, a
node whose peak memory at that size would pass the limit::

    error: node 6 (Decode): decoding 16384x16384x1 (size set by EmptyLatent 4) needs about 1.0 TiB
        (limit 16.3 GiB: 75% of the 21.7 GiB of host memory free)
        fix:      use a smaller size or batch, or work in tiles (tiled=true, VAEDecodeTiled / VAEEncodeTiled)

The peaks are measured on Stable Diffusion's VAE and UNet in float32 on a CPU (the largest
of the families we load; smaller models fit under the same bound): a decode holds about
4.1 KiB per output pixel at full resolution (the 128- and 256-channel activations of the
last level; `python -c` of ``AutoencoderKL().decode`` at 256 and 512 pixels gives 4374 and
4129 B/px), a UNet evaluation with guidance about 1 KiB per pixel per item (the level-1
transformer and the skip activations, twice for the conditional and unconditional
batch). The steps of a sampler do not change its peak (a sampler holds a fixed number of
latents), so they are bounded by the widget's maximum only; an interrupt stops a long run
within a block's time (``sgm.nets.interrupt``).

An upscale model (ImageUpscaleWithModel) multiplies each side by its scale, which is known only
once its file is loaded: UpscaleModelLoader's check passes on the scale of a file version this
installation loaded before (:class:`UpscaleFactor`), so a repeated workflow is checked here;
otherwise the node checks itself before it runs (:func:`check_upscale`), with the scale of the
model in hand. Its peak is the float32 output it holds in host memory (the blended sum, its
(B, H, W, C) copy and the weight sum: 24 B per output pixel per image, plus 4) and the network
on one tile, which halves down to UPSCALE_MIN_TILE when memory is short, so only that smallest
tile counts here: ESRGAN (64 features, float32, CPU, peak RSS of a 256-pixel tile) held 12.8 KB
per input pixel at scale 4 and 3.96 KB at scale 2, i.e. about 1 KiB per input pixel plus
0.75 KiB per output pixel.

The limit for a pass on the CPU is HOST_SHARE of the host memory available when the prompt
is validated (``MemAvailable``). When torch is loaded with CUDA initialised, a UNet / VAE
pass is bounded instead by GPU_SHARE of the GPU's total memory, at half precision: the model
cache offloads models to make room and a GPU out-of-memory is retried, so only what could
never fit is refused there; the images a pass returns still land in host memory and are
bounded by it. Nothing here imports torch: validation stays torch-free (``gpu_total_bytes``
only reads a torch already loaded).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from engine.api import NodeSpec
from engine.validation import CheckInput, CheckProblem, CheckResult

LATENT_FACTOR = 8  # image pixels per latent pixel of every VAE we load (SD 1.x / 2.x / SDXL, the embedded one)
DECODE_BYTES_PER_PIXEL = 4200  # float32 SD VAE decode/encode, per image pixel (see above)
UNET_BYTES_PER_PIXEL = 1024  # float32 SD UNet with CFG, per image pixel per batch item
IMAGE_BYTES_PER_PIXEL = 12  # IMAGE (B, H, W, 3) float32
TILE_PIXELS = 512 * 512  # a decode/encode tile at the tiled nodes' default (512 image pixels)
SCALE_COPIES = 3  # ScaleImage holds the input, a (B, 3, H, W) resized copy and the output
LOAD_BYTES_PER_PIXEL = 36  # an 8-bit RGBA decode, its float32 copy (16 B) and the IMAGE + MASK (16 B)
SAVE_BYTES_PER_PIXEL = 40  # PNG conversion: clamped, scaled and rounded float32 copies and the 8-bit image
HOST_SHARE = 0.75  # of the host memory free at validation; the rest is for the server, models, other runs
GPU_SHARE = 0.9  # of the GPU's total memory: the model cache offloads models to make room, so only a
# pass that could not fit even then is refused (a GPU out-of-memory is caught and retried; host
# exhaustion takes the server down, hence the tighter host bound)
GPU_PRECISION = 0.5  # networks run in half precision on accelerators (sgm.devices), our estimates are float32
MAX_IMAGE_PIXELS = 8192 * 8192  # an input image (upload, LoadImage) holds at most this many pixels
UPSCALE_TILE_BYTES_PER_INPUT_PIXEL = 1024  # an upscale network on one tile (ESRGAN, see above)
UPSCALE_TILE_BYTES_PER_OUTPUT_PIXEL = 768
UPSCALE_MIN_TILE = 128  # sgm.io.upscalers.MIN_TILE: the smallest tile a short-of-memory run halves to


class ResourceLimitError(ValueError):
    """A node refused to start a pass whose estimated peak memory passes the limit."""


@dataclass(frozen=True)
class Size:
    """Image pixels and batch of a LATENT or IMAGE, as validation can know it; ``source``
    names the node that set it (for messages)."""

    width: int
    height: int
    batch: int = 1
    source: str = ""

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.batch

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.batch}"


@dataclass(frozen=True)
class Budget:
    limit: int  # bytes a node may need at its peak
    measured: int  # the bytes the limit is a share of
    where: str  # "host memory free" / "GPU memory in all"
    share: float
    precision: float = 1.0  # bytes per float32 byte of the estimates where the pass runs

    def describe(self) -> str:
        return f"limit {_gib(self.limit)}: {self.share:.0%} of the {_gib(self.measured)} of {self.where}"


def free_host_bytes() -> int:
    """Host memory available now (Linux ``MemAvailable``; physical free pages elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no memory-derived limit (the widget maxima still apply)


def gpu_total_bytes() -> int | None:
    """The current CUDA device's memory when torch is loaded and CUDA initialised, else None
    (importing torch here would make every validation pay for it)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            _free, total = cuda.mem_get_info()
            return int(total)
    except Exception:  # noqa: BLE001 - a driver that answers badly: fall back to the host bound
        return None
    return None


def host_budget() -> Budget:
    free = free_host_bytes()
    return Budget(int(free * HOST_SHARE), free, "host memory free", HOST_SHARE)


def network_budget() -> Budget:
    """Where a UNet / VAE pass runs: the GPU when one is in use, else the host."""
    total = gpu_total_bytes()
    if total is None:
        return host_budget()
    return Budget(int(total * GPU_SHARE), total, "GPU memory in all", GPU_SHARE, GPU_PRECISION)


def _gib(count: float) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count / 1024:.1f} KiB"


# --------------------------------------------------------------------------- estimates


def decode_bytes(size: Size, tiled: bool) -> int:
    """Peak bytes of a VAE decode (or encode) to/from ``size`` image pixels."""
    if tiled:  # one tile's decode, the float32 output and weight accumulators, the IMAGE
        return DECODE_BYTES_PER_PIXEL * min(TILE_PIXELS, size.pixels) + (12 + 4 + IMAGE_BYTES_PER_PIXEL) * size.pixels
    return DECODE_BYTES_PER_PIXEL * size.pixels


def unet_bytes(size: Size) -> int:
    return UNET_BYTES_PER_PIXEL * size.pixels


def _refuse(node: CheckInput, what: str, size: Size, need: int, budget: Budget, fix: str,
            input_name: str | None = None) -> CheckProblem:
    origin = f" (size set by {size.source})" if size.source and size.source != f"{node.node_type} {node.node_id}" else ""
    return CheckProblem(
        f"{what} {size}{origin} needs about {_gib(need)} "
        f"({budget.describe()})", hint=fix, input=input_name, expected=f"at most {_gib(budget.limit)}",
        actual=f"about {_gib(need)} for {size}")


def _multiple(node: CheckInput, names: Sequence[str]) -> list[CheckProblem]:
    """Our nodes refuse sizes that are not multiples of the latent factor (ComfyUI's round down)."""
    problems = []
    for name in names:
        value = node.values.get(name)
        if isinstance(value, int) and value % LATENT_FACTOR:
            low = value // LATENT_FACTOR * LATENT_FACTOR
            problems.append(CheckProblem(
                f"{name} {value} is not a multiple of {LATENT_FACTOR} "
                f"(one latent pixel is {LATENT_FACTOR}x{LATENT_FACTOR} image pixels)",
                hint=f"use {low} or {low + LATENT_FACTOR}", input=name, expected=f"a multiple of {LATENT_FACTOR}",
                actual=str(value), code="bad_value"))
    return problems


def _upstream(node: CheckInput, name: str) -> Size | None:
    size = node.upstream.get(name)
    return size if isinstance(size, Size) else None


# --------------------------------------------------------------------------- checks


def empty_latent(round_down: bool) -> Callable[[CheckInput], CheckResult]:
    def check(node: CheckInput) -> CheckResult:
        width, height, batch = (node.values.get(k) for k in ("width", "height", "batch_size"))
        if not all(isinstance(v, int) for v in (width, height, batch)):
            return CheckResult()
        problems = () if round_down else tuple(_multiple(node, ("width", "height")))
        if round_down:  # ComfyUI's EmptyLatentImage: width // 8 * 8
            width, height = width // LATENT_FACTOR * LATENT_FACTOR, height // LATENT_FACTOR * LATENT_FACTOR
        return CheckResult(Size(width, height, batch, f"{node.node_type} {node.node_id}"), problems)
    return check


def scale_latent(node: CheckInput) -> CheckResult:
    width, height = node.values.get("width"), node.values.get("height")
    if not isinstance(width, int) or not isinstance(height, int):
        return CheckResult()
    below = _upstream(node, "latent") or _upstream(node, "samples")
    batch = below.batch if below else 1
    if node.node_type == "LatentUpscale":  # ComfyUI's: 0 keeps the aspect ratio, sizes under 64 become 64
        if width == 0 and height == 0:
            return CheckResult(below)
        if width == 0 or height == 0:
            if below is None:
                return CheckResult()
            if width == 0:
                height = max(64, height)
                width = max(64, round(below.width * height / below.height))
            else:
                width = max(64, width)
                height = max(64, round(below.height * width / below.width))
        return CheckResult(Size(max(64, width), max(64, height), batch, f"{node.node_type} {node.node_id}"))
    return CheckResult(Size(width, height, batch, f"{node.node_type} {node.node_id}"),
                       tuple(_multiple(node, ("width", "height"))))


def scale_latent_by(node: CheckInput) -> CheckResult:
    below, factor = _upstream(node, "samples"), node.values.get("scale_by")
    if below is None or not isinstance(factor, (int, float)):
        return CheckResult()
    return CheckResult(Size(round(below.width * factor), round(below.height * factor), below.batch,
                            f"{node.node_type} {node.node_id}"))


def repeat_batch(node: CheckInput) -> CheckResult:
    below, amount = _upstream(node, "samples"), node.values.get("amount")
    if below is None or not isinstance(amount, int):
        return CheckResult()
    return CheckResult(replace(below, batch=below.batch * amount, source=f"{node.node_type} {node.node_id}"))


def slice_batch(node: CheckInput) -> CheckResult:
    below = _upstream(node, "latent") or _upstream(node, "samples")
    length = node.values.get("length")
    if below is None or not isinstance(length, int):
        return CheckResult()
    return CheckResult(replace(below, batch=max(1, min(below.batch, length))))


def passthrough(*names: str) -> Callable[[CheckInput], CheckResult]:
    def check(node: CheckInput) -> CheckResult:
        return CheckResult(next((s for n in names if (s := _upstream(node, n)) is not None), None))
    return check


def sampler(*names: str) -> Callable[[CheckInput], CheckResult]:
    """A UNet sampler: its latent passes through; its peak is the guided UNet evaluation."""
    def check(node: CheckInput) -> CheckResult:
        size = next((s for n in names if (s := _upstream(node, n)) is not None), None)
        if size is None:
            return CheckResult()
        budget = network_budget()
        need = int(unet_bytes(size) * budget.precision)
        if need <= budget.limit:
            return CheckResult(size)
        return CheckResult(size, (_refuse(node, "sampling", size, need, budget,
                                          "use a smaller size or batch, or sample small and upscale"),))
    return check


def vae_pass(kind: str, latent_input: str, tiled_input: str | None, always_tiled: bool) -> Callable[[CheckInput], CheckResult]:
    """Decode (``kind`` "decoding") or encode: the VAE pass's peak and the host copy of its output."""
    def check(node: CheckInput) -> CheckResult:
        size = _upstream(node, latent_input)
        if size is None:
            return CheckResult()
        if kind == "encoding":  # the encoder crops to a multiple of the factor
            size = replace(size, width=size.width // LATENT_FACTOR * LATENT_FACTOR,
                           height=size.height // LATENT_FACTOR * LATENT_FACTOR)
        tiled = always_tiled or bool(tiled_input and node.values.get(tiled_input))
        budget = network_budget()
        need = int(decode_bytes(size, tiled) * budget.precision)
        host = host_budget()
        output = IMAGE_BYTES_PER_PIXEL * size.pixels
        if need > budget.limit:
            fix = ("use a smaller size or batch" if tiled else
                   "use a smaller size or batch, or work in tiles (tiled=true, VAEDecodeTiled / VAEEncodeTiled)")
            return CheckResult(size, (_refuse(node, kind, size, need, budget, fix),))
        if output > host.limit:
            return CheckResult(size, (_refuse(node, f"holding the images of {kind}", size, output, host,
                                              "use a smaller size or batch"),))
        return CheckResult(size)
    return check


def scale_image(node: CheckInput) -> CheckResult:
    below = _upstream(node, "image")
    width, height = node.values.get("width"), node.values.get("height")
    factor = node.values.get("scale_by")
    if node.node_type == "ImageScaleBy":
        if below is None or not isinstance(factor, (int, float)):
            return CheckResult()
        width, height = max(1, round(below.width * factor)), max(1, round(below.height * factor))
    if not isinstance(width, int) or not isinstance(height, int):
        return CheckResult()
    if width == 0 or height == 0:  # ComfyUI's ImageScale: 0 keeps the aspect ratio (or the image)
        if below is None:
            return CheckResult()
        if width == 0 and height == 0:
            return CheckResult(below)
        width = width or max(1, round(below.width * height / below.height))
        height = height or max(1, round(below.height * width / below.width))
    size = Size(width, height, below.batch if below else 1, f"{node.node_type} {node.node_id}")
    budget, need = host_budget(), SCALE_COPIES * IMAGE_BYTES_PER_PIXEL * size.pixels
    if need > budget.limit:
        return CheckResult(size, (_refuse(node, "scaling to", size, need, budget, "scale to a smaller size"),))
    return CheckResult(size)


def save_images(node: CheckInput) -> CheckResult:
    """SaveImage / PreviewImage: converting the batch to 8-bit PNGs holds a few float copies."""
    size = _upstream(node, "images")
    if size is None:
        return CheckResult()
    budget, need = host_budget(), SAVE_BYTES_PER_PIXEL * size.pixels
    if need > budget.limit:
        return CheckResult(size, (_refuse(node, "saving", size, need, budget, "save a smaller image or batch"),))
    return CheckResult(size)


@dataclass(frozen=True)
class UpscaleFactor:
    """An UPSCALE_MODEL as validation can know it: ``model`` (its file name) and its ``scale``,
    when this installation has loaded that version of the file (None before)."""

    model: str
    scale: int | None


def upscale_host_bytes(size: Size, scale: int) -> int:
    """Host bytes an upscale of ``size`` input pixels by ``scale`` holds to the end: the
    float32 input copy, the blended (B, C, H*s, W*s) sum, its (B, H*s, W*s, C) copy, the
    weight sum of one image (``sgm.io.upscalers.upscale_image``)."""
    output = size.width * scale * size.height * scale
    return IMAGE_BYTES_PER_PIXEL * size.pixels + 2 * IMAGE_BYTES_PER_PIXEL * output * size.batch + 4 * output


def upscale_tile_bytes(size: Size, scale: int) -> int:
    """Bytes of the network on one tile of the smallest size (float32)."""
    tile = min(size.width, UPSCALE_MIN_TILE) * min(size.height, UPSCALE_MIN_TILE)
    return tile * (UPSCALE_TILE_BYTES_PER_INPUT_PIXEL + UPSCALE_TILE_BYTES_PER_OUTPUT_PIXEL * scale * scale)


def upscale_problems(node: CheckInput, image: Size, scale: int, model: str) -> list[CheckProblem]:
    """Why upscaling ``image`` by ``scale`` cannot fit (none when it can): on the CPU the
    network's tile and the output share the host's limit; on a GPU the tile is bounded by
    the GPU's, the output by the host's."""
    output = Size(image.width * scale, image.height * scale, image.batch, image.source)
    what = f"upscaling by {scale} ({model}) to"
    fix = "use a smaller image or batch, or a model of a lower scale (then ImageScaleBy for the rest)"
    host, network = host_budget(), network_budget()
    held = upscale_host_bytes(image, scale)
    tile = int(upscale_tile_bytes(image, scale) * network.precision)
    if network.where == host.where:  # no GPU: both in host memory
        return [_refuse(node, what, output, held + tile, host, fix)] if held + tile > host.limit else []
    problems = []
    if tile > network.limit:
        problems.append(_refuse(node, f"the network's smallest tile in {what}", output, tile, network, fix))
    if held > host.limit:
        problems.append(_refuse(node, f"holding the images of {what}", output, held, host, fix))
    return problems


def upscale_model_loader(known_scale: Callable[[str], int | None]) -> Callable[[CheckInput], CheckResult]:
    """UpscaleModelLoader: passes on the model's scale where ``known_scale(model_name)`` knows
    it (a version of the file this installation loaded before)."""
    def check(node: CheckInput) -> CheckResult:
        name = node.values.get("model_name")
        if not isinstance(name, str):
            return CheckResult()
        return CheckResult(UpscaleFactor(name, known_scale(name)))
    return check


def upscale_with_model(node: CheckInput) -> CheckResult:
    """ImageUpscaleWithModel: checked here when the model's scale is known, else when it runs
    (:func:`check_upscale`); with the scale its output size flows on."""
    image, model = _upstream(node, "image"), node.upstream.get("upscale_model")
    if image is None or not isinstance(model, UpscaleFactor) or model.scale is None:
        return CheckResult()
    output = Size(image.width * model.scale, image.height * model.scale, image.batch,
                  f"{node.node_type} {node.node_id}")
    return CheckResult(output, tuple(upscale_problems(node, image, model.scale, model.model)))


def check_upscale(node_id: str, width: int, height: int, batch: int, scale: int, model: str) -> None:
    """Before ImageUpscaleWithModel node ``node_id`` runs, its model loaded (so its scale
    known): raise :class:`ResourceLimitError` when upscaling a ``batch`` of ``width`` x
    ``height`` images by ``scale`` cannot fit, with the estimate, the limit and the fix."""
    node = CheckInput(node_id, "ImageUpscaleWithModel", {}, {})
    problems = upscale_problems(node, Size(width, height, batch), scale, model)
    if problems:
        raise ResourceLimitError("; ".join(problem.message for problem in problems) + f"; {problems[0].hint}")


def image_header_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding its pixels."""
    from PIL import Image

    with warnings.catch_warnings():  # PIL warns past 89 megapixels; MAX_IMAGE_PIXELS decides here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # EXIF rotations swap sides


def pixel_problem(width: int, height: int, what: str) -> str | None:
    """Why an input image of this size is refused, or None."""
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels; input images are limited to "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (decoding it would take about "
                f"{_gib(width * height * LOAD_BYTES_PER_PIXEL)})")
    return None


def load_image(input_dir: Callable[[], Path]) -> Callable[[CheckInput], CheckResult]:
    """LoadInputImage / LoadImage / LoadImageMask: the file's header gives its size."""
    def check(node: CheckInput) -> CheckResult:
        from nodes.runtime import confined

        name = node.values.get("image")
        path = confined(input_dir(), name) if isinstance(name, str) else None
        if path is None or not path.is_file():
            return CheckResult()  # the node says the file is missing when it runs
        try:
            width, height = image_header_size(path)
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds for a damaged file
            return CheckResult(problems=(CheckProblem(
                f"{name!r} is not a readable image ({type(error).__name__}: "
                f"{error})", hint="upload the image again, or pick another", input="image", code="bad_value"),))
        size = Size(width, height, 1, f"{node.node_type} {node.node_id}")
        problem = pixel_problem(width, height, repr(name))
        if problem:
            return CheckResult(size, (CheckProblem(problem, hint="downscale the image before loading it",
                                                   input="image", actual=f"{width}x{height}",
                                                   expected=f"at most {MAX_IMAGE_PIXELS} pixels"),))
        budget, need = host_budget(), LOAD_BYTES_PER_PIXEL * size.pixels
        if need > budget.limit:
            return CheckResult(size, (_refuse(node, "loading", size, need, budget, "use a smaller image",
                                              "image"),))
        return CheckResult(size)
    return check


def checks(input_dir: Callable[[], Path]) -> dict[str, Callable[[CheckInput], CheckResult]]:
    """Node id -> its check, for our nodes and ComfyUI's adapters over them."""
    loading = load_image(input_dir)
    return {
        "EmptyLatent": empty_latent(round_down=False),
        "EmptyLatentImage": empty_latent(round_down=True),
        "ScaleLatent": scale_latent,
        "LatentUpscale": scale_latent,
        "LatentUpscaleBy": scale_latent_by,
        "RepeatLatentBatch": repeat_batch,
        "SliceLatentBatch": slice_batch,
        "LatentFromBatch": slice_batch,
        "SetLatentMask": passthrough("latent"),
        "SetLatentNoiseMask": passthrough("samples"),
        "SampleLatent": sampler("latent"),
        "KSampler": sampler("latent_image"),
        "KSamplerAdvanced": sampler("latent_image"),
        "Sampler": sampler("latent"),
        "SamplerCustom": sampler("latent_image"),
        "SamplerCustomAdvanced": sampler("latent_image"),
        "Decode": vae_pass("decoding", "latent", "tiled", False),
        "VAEDecode": vae_pass("decoding", "samples", None, False),
        "VAEDecodeTiled": vae_pass("decoding", "samples", None, True),
        "EncodeLatent": vae_pass("encoding", "image", "tiled", False),
        "VAEEncode": vae_pass("encoding", "pixels", None, False),
        "VAEEncodeTiled": vae_pass("encoding", "pixels", None, True),
        "ScaleImage": scale_image,
        "ImageScale": scale_image,
        "ImageScaleBy": scale_image,
        "ImageUpscaleWithModel": upscale_with_model,
        "SaveImage": save_images,
        "PreviewImage": save_images,
        "LoadInputImage": loading,
        "LoadImage": loading,
        "LoadImageMask": loading,
    }


def with_checks(specs: Sequence[NodeSpec], table: Mapping[str, Callable[[CheckInput], CheckResult]]) -> list[NodeSpec]:
    """``specs`` with the table's checks attached (a spec that declares its own keeps it)."""
    return [replace(spec, check=table[spec.id]) if spec.id in table and getattr(spec, "check", None) is None
            else spec for spec in specs]
