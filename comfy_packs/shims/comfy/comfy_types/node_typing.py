from comfy.comfy_types import IO, InputTypeDict, ComfyNodeABC, CheckLazyMixin  # noqa: F401
