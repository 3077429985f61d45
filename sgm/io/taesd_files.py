"""TAESD files: reading encoder / decoder weights, telling their family, finding them on disk.

ComfyUI users keep TAESD in ``models/vae_approx/`` as madebyollin's release names it:
``taesd_encoder.pth`` / ``taesd_decoder.pth`` (SD 1.x and 2.x) and ``taesdxl_encoder`` /
``taesdxl_decoder`` (SDXL), as ``.pth`` or ``.safetensors``. Two key layouts are read:

- madebyollin's: one ``nn.Sequential`` per file, keys ``0.weight``, ``1.conv.0.weight``, ...
  (see :mod:`sgm.nets.taesd`); ComfyUI's own ``taesd_encoder.`` / ``taesd_decoder.``
  prefixes are stripped too;
- diffusers' ``AutoencoderTiny``: ``encoder.layers.N...`` and ``decoder.layers.N...``, one
  or both halves in a file. The encoder's indices are the same; the decoder's are one lower
  (diffusers applies the input clamp in ``forward`` instead of as layer 0).

The family comes from the file name (``taesdxl*`` -> sdxl, ``taesd*`` -> sd1) unless given.
The 16-channel variants (taesd3, taef1) are refused with a message saying so.

Finding files and naming families needs no torch: torch and the networks are imported by
the functions that load, so listing the VAE choices (``/object_info``) stays torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from sgm.nets.taesd import TinyAutoencoder, TinyDecoder, TinyEncoder

Part = Literal["encoder", "decoder"]
PARTS: tuple[Part, ...] = ("encoder", "decoder")
TAESD_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")  # preference order when both exist
# file-name prefix -> the checkpoint family whose latent space it works in
PREFIX_FAMILIES = {"taesd": "sd1", "taesdxl": "sdxl"}
UNSUPPORTED_PREFIXES = ("taesd3", "taef1", "taef2", "taesana", "taehv", "taew")
LATENT_CHANNELS = 4

_ENCODER_LAST = "14.weight"  # (latent, w, 3, 3): the encoder's output conv
_DECODER_LAST = "19.weight"  # (3, w, 3, 3): the decoder's output conv


class TaesdFileError(ValueError):
    """A file that is not a usable TAESD half (the message says what was found and what to do)."""


# ---------------------------------------------------------------------------- names and families


def taesd_prefix(family: str) -> str | None:
    """``taesd`` for SD 1.x / 2.x families, ``taesdxl`` for SDXL ones (refiner included), else None."""
    if family.startswith("sdxl") or family == "taesdxl":
        return "taesdxl"
    if family.startswith(("sd1", "sd2")) or family == "taesd":
        return "taesd"
    return None


def family_from_name(path: str | Path) -> str | None:
    """The family a TAESD file name says (``taesdxl_decoder.pth`` -> ``sdxl``), or None if it says none.

    Raises :class:`TaesdFileError` for the 16-channel variants (taesd3, taef1, ...).
    """
    name = Path(path).name.lower()
    if name.startswith(UNSUPPORTED_PREFIXES):
        raise TaesdFileError(
            f"{Path(path).name}: only TAESD for SD 1.x/2.x (taesd_*) and SDXL (taesdxl_*) is supported, "
            "not the 16-channel variants for SD3 / Flux")
    for prefix in sorted(PREFIX_FAMILIES, key=len, reverse=True):  # taesdxl before taesd
        if name.startswith(prefix):
            return PREFIX_FAMILIES[prefix]
    return None


def latent_scale(family: str) -> tuple[float, float]:
    """(scale_factor, shift_factor) of a family's VAE latents: diffusion latent = (z - shift) * scale."""
    from sgm.io.checkpoints import SCALE_FACTORS

    prefix = taesd_prefix(family)
    if prefix is None:
        raise TaesdFileError(f"no TAESD latent scale for family {family!r}; expected sd1, sd2 or sdxl")
    return (SCALE_FACTORS["sdxl"] if prefix == "taesdxl" else SCALE_FACTORS["sd"]), 0.0


# ---------------------------------------------------------------------------- key layouts


def _part_from_name(path: Path) -> Part | None:
    name = path.name.lower()
    found = [part for part in PARTS if part in name]
    return found[0] if len(found) == 1 else None


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _from_diffusers(state_dict: dict[str, torch.Tensor], part: Part) -> dict[str, torch.Tensor]:
    """``{part}.layers.N.rest`` -> madebyollin's ``M.rest`` (M = N for the encoder, N + 1 for the decoder)."""
    offset = 1 if part == "decoder" else 0
    converted: dict[str, torch.Tensor] = {}
    for key, value in _strip(state_dict, f"{part}.layers.").items():
        index, _, rest = key.partition(".")
        if not index.isdigit():
            raise TaesdFileError(f"unexpected diffusers AutoencoderTiny key {part}.layers.{key}")
        converted[f"{int(index) + offset}.{rest}"] = value
    return converted


def to_diffusers(state_dict: dict[str, torch.Tensor], part: Part) -> dict[str, torch.Tensor]:
    """madebyollin's keys of one half -> diffusers AutoencoderTiny's ``{part}.layers.N...`` (tensors shared)."""
    offset = 1 if part == "decoder" else 0
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        index, _, rest = key.partition(".")
        converted[f"{part}.layers.{int(index) - offset}.{rest}"] = value
    return converted


def _is_sequential_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return bool(state_dict) and all(re.match(r"\d+\.", key) for key in state_dict)


def split_halves(state_dict: dict[str, torch.Tensor], name: str = "") -> dict[Part, dict[str, torch.Tensor]]:
    """The TAESD halves in a state dict, each in madebyollin's layout (one or two entries).

    ``name`` (the file name) tells which half a bare madebyollin file is when its keys alone
    cannot, and is used in messages. Raises :class:`TaesdFileError` when nothing fits.
    """
    halves: dict[Part, dict[str, torch.Tensor]] = {}
    for part in PARTS:
        if any(k.startswith(f"{part}.layers.") for k in state_dict):
            halves[part] = _from_diffusers(state_dict, part)
        for prefix in (f"taesd_{part}.", f"{part}."):  # ComfyUI's TAESD module, or a plain prefix
            stripped = _strip(state_dict, prefix)
            if part not in halves and _is_sequential_layout(stripped):
                halves[part] = stripped
    if halves:
        return halves
    if _is_sequential_layout(state_dict):
        if _DECODER_LAST in state_dict:
            return {"decoder": state_dict}
        if _ENCODER_LAST in state_dict:
            return {"encoder": state_dict}
    shown = ", ".join(sorted(state_dict)[:6]) or "no tensors"
    raise TaesdFileError(
        f"{name or 'this file'} is not a TAESD encoder or decoder: expected madebyollin's keys (0.weight, "
        f"1.conv.0.weight, ...) or diffusers AutoencoderTiny's (encoder.layers.N / decoder.layers.N), found "
        f"{shown}; put taesd_encoder/taesd_decoder (or taesdxl_*) files from madebyollin/taesd in models/vae_approx/")


def _shapes(state_dict: dict[str, torch.Tensor], part: Part, name: str) -> tuple[int, int]:
    """(latent_channels, width) of a half, read from its input and output convolutions."""
    first, last = ("0.weight", _ENCODER_LAST) if part == "encoder" else ("1.weight", _DECODER_LAST)
    if first not in state_dict or last not in state_dict or state_dict[first].ndim != 4:
        raise TaesdFileError(f"{name}: not a TAESD {part}: the keys {first} and {last} (convolutions) are missing")
    if part == "encoder":
        width, latent = state_dict[first].shape[0], state_dict[last].shape[0]
    else:
        width, latent = state_dict[first].shape[0], state_dict[first].shape[1]
    if latent != LATENT_CHANNELS:
        raise TaesdFileError(
            f"{name}: a TAESD {part} for {latent}-channel latents; only the 4-channel SD 1.x/2.x and SDXL "
            "TAESD (taesd_*, taesdxl_*) is supported")
    return int(latent), int(width)


def build_half(state_dict: dict[str, torch.Tensor], part: Part, name: str = "") -> TinyEncoder | TinyDecoder:
    """A TinyEncoder / TinyDecoder holding ``state_dict`` (madebyollin keys), float32, eval mode."""
    from sgm.nets.taesd import TinyDecoder, TinyEncoder

    name = name or f"TAESD {part}"
    latent, width = _shapes(state_dict, part, name)
    module = TinyEncoder(latent, width) if part == "encoder" else TinyDecoder(latent, width)
    try:
        module.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1][:400]
        raise TaesdFileError(f"{name}: the tensors do not fit a TAESD {part} ({detail})") from None
    return module.eval()


def read_taesd_file(path: str | Path) -> dict[Part, dict[str, torch.Tensor]]:
    """The TAESD halves in one file (.pth through the weights-only loader, or .safetensors)."""
    from sgm.io.state_dict import read_state_dict

    path = Path(path)
    state_dict, _ = read_state_dict(path)
    halves = split_halves(state_dict, path.name)
    said = _part_from_name(path)
    if said is not None and len(halves) == 1 and said not in halves:
        found = next(iter(halves))
        raise TaesdFileError(f"{path.name}: the name says TAESD {said}, but the file holds a TAESD {found}; "
                             "rename it or put the right file in its place")
    return halves


def load_taesd_part(path: str | Path, part: Part) -> TinyEncoder | TinyDecoder:
    """The ``part`` half of a TAESD file (a madebyollin file, or a diffusers file holding it)."""
    path = Path(path)
    halves = read_taesd_file(path)
    if part not in halves:
        raise TaesdFileError(f"{path.name} holds a TAESD {next(iter(halves))}, not the {part} asked for")
    return build_half(halves[part], part, path.name)


def _family_of(paths: Sequence[Path], family: str | None) -> str:
    if family is not None:
        if taesd_prefix(family) is None:
            raise TaesdFileError(f"TAESD family {family!r} is not one of sd1, sd2, sdxl")
        return family
    said = {p.name: family_from_name(p) for p in paths}
    families = set(said.values())
    if None in families:
        unknown = next(n for n, f in said.items() if f is None)
        raise TaesdFileError(f"cannot tell the family of {unknown} from its name (expected taesd_* for SD 1.x/2.x, "
                             "taesdxl_* for SDXL); rename it or pass the family (sd1 or sdxl)")
    if len(families) > 1:
        raise TaesdFileError(f"the TAESD files {', '.join(said)} are for different families ({said})")
    return families.pop()  # type: ignore[return-value]


def load_tiny_autoencoder(
    encoder_path: str | Path | None = None,
    decoder_path: str | Path | None = None,
    family: str | None = None,
    dtype: torch.dtype | None = None,
) -> TinyAutoencoder:
    """A TAESD from its encoder and/or decoder file (one diffusers file may hold both: pass it as either).

    ``family`` (sd1, sd2, sdxl, ...) overrides the one the file names say; it sets the latent
    scale. ``dtype`` casts the weights (float32 when None).
    """
    from sgm.nets.taesd import TinyAutoencoder

    paths = [Path(p) for p in (encoder_path, decoder_path) if p is not None]
    if not paths:
        raise TaesdFileError("load_tiny_autoencoder needs an encoder file, a decoder file or both")
    family = _family_of(paths, family)
    halves: dict[Part, TinyEncoder | TinyDecoder] = {}
    for path, wanted in ((encoder_path, "encoder"), (decoder_path, "decoder")):
        if path is None:
            continue
        path = Path(path)
        found = read_taesd_file(path)
        if wanted not in found:
            raise TaesdFileError(f"{path.name} was given as the TAESD {wanted} but holds a TAESD "
                                 f"{next(iter(found))}; swap the two files")
        for part, state_dict in found.items():  # a diffusers file gives both halves at once
            if part not in halves:
                halves[part] = build_half(state_dict, part, path.name)
    scale, shift = latent_scale(family)
    encoder, decoder = halves.get("encoder"), halves.get("decoder")
    model = TinyAutoencoder(encoder, decoder, scale, shift, family)  # type: ignore[arg-type]
    return model.to(dtype) if dtype is not None else model


# ---------------------------------------------------------------------------- finding files


def find_taesd_file(folders: Iterable[str | Path], family: str, part: Part = "decoder") -> Path | None:
    """The ``{taesd|taesdxl}_{part}`` file for ``family`` in the first of ``folders`` holding one, or None.

    ``folders`` are the vae_approx folders in search order (``model_paths.folders("vae_approx")``).
    A file named exactly ``taesd_decoder.<ext>`` wins over e.g. ``taesd_decoder_fp16.<ext>``;
    then .safetensors over .pth. Families without a TAESD (e.g. tiny-shapes) give None.
    """
    prefix = taesd_prefix(family)
    if prefix is None:
        return None
    stem = f"{prefix}_{part}"
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        found = [p for p in folder.iterdir()
                 if p.is_file() and p.name.lower().startswith(stem) and p.suffix.lower() in TAESD_EXTENSIONS]
        if found:
            return min(found, key=lambda p: (p.stem.lower() != stem, TAESD_EXTENSIONS.index(p.suffix.lower()), p.name))
    return None


def find_preview_decoder(folders: Iterable[str | Path], family: str) -> Path | None:
    """The TAESD decoder that previews ``family``'s latents (``--preview-method taesd``), or None if absent."""
    return find_taesd_file(folders, family, "decoder")


def taesd_vae_names(folders: Iterable[str | Path]) -> list[str]:
    """``taesd`` / ``taesdxl`` for each family whose encoder *and* decoder are in ``folders`` (a VAE choice)."""
    folders = list(folders)
    return [prefix for prefix, family in PREFIX_FAMILIES.items()
            if find_taesd_file(folders, family, "encoder") and find_taesd_file(folders, family, "decoder")]

