"""ComfyUI's ``comfy.utils``: ProgressBar, common_upscale, load_torch_file, tiled_scale, ..."""

from comfy_packs.runtime import (ProgressBar, common_upscale, load_torch_file,  # noqa: F401
                                 repeat_to_batch_size, tiled_scale)

PROGRESS_BAR_ENABLED = True
MAX_RESOLUTION = 16384


def save_torch_file(sd, ckpt, metadata=None):
    """Write a state dict as .safetensors."""
    from safetensors.torch import save_file

    save_file(sd, ckpt, metadata=metadata)


def state_dict_prefix_replace(state_dict, replace_prefix, filter_keys=False):
    """Keys starting with a prefix of ``replace_prefix`` get its replacement (a new dict)."""
    out = {} if filter_keys else dict(state_dict)
    for prefix, replacement in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(prefix)]:
            out.pop(key, None)
            out[replacement + key[len(prefix):]] = state_dict[key]
    return out
