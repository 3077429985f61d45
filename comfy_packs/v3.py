"""ComfyUI's V3 schema API (``comfy_api.latest``: ``io.ComfyNode``, ``define_schema``,
``execute``), as far as it is a thin mapping onto a :class:`comfy_packs.nodeclass.PackNode`.

The names here are what ``from comfy_api.latest import io, ui, ComfyExtension`` gives a pack.
Inputs are ``io.<Type>.Input(id, ...)``, outputs ``io.<Type>.Output(...)``; ``execute`` is a
classmethod returning ``io.NodeOutput(*values, ui=...)``; ``fingerprint_inputs``,
``validate_inputs`` and ``check_lazy_status`` are IS_CHANGED, VALIDATE_INPUTS and the lazy hook;
``NodeOutput(expand=graph)`` and ``NodeOutput(block_execution=message)`` expand and block as the
class API's results do. Dynamic inputs and the V3 resource/state helpers are not offered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from engine.api import OutputSpec
from comfy_packs.nodeclass import PackNode, input_spec


class Hidden(str, enum.Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


@dataclass
class HiddenHolder:
    unique_id: str | None = None
    prompt: Any = None
    extra_pnginfo: Any = None
    dynprompt: Any = None
    auth_token_comfy_org: Any = None
    api_key_comfy_org: Any = None


class Input:
    """``io.<Type>.Input(id, display_name=, optional=, tooltip=, lazy=, default=, min=, max=, ...)``."""

    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, **options: Any) -> None:
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.options = options

    def entry(self) -> tuple[Any, dict[str, Any]]:
        """The class API's ``(TYPE, {options})`` for this input."""
        options = {k: v for k, v in self.options.items() if v is not None}
        if options.pop("force_input", False):
            options["forceInput"] = True
        if options.pop("dynamic_prompts", False):
            options["dynamicPrompts"] = True
        if options.pop("raw_link", False):
            options["rawLink"] = True
        if self.tooltip:
            options["tooltip"] = self.tooltip
        if self.lazy:
            options["lazy"] = True
        if self.io_type == "COMBO":
            return tuple(options.pop("options", ()) or ()), options
        return self.io_type, options


class Output:
    """``io.<Type>.Output(id=None, display_name=None, tooltip=None, is_output_list=False)``."""

    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False, **_: Any) -> None:
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _io_type(io_type: str) -> type:
    input_class = type("Input", (Input,), {"io_type": io_type})
    output_class = type("Output", (Output,), {"io_type": io_type})
    return type(io_type.title(), (), {"io_type": io_type, "Input": input_class, "Output": output_class})


def Custom(io_type: str) -> type:  # noqa: N802 - ComfyUI's name
    """``io.Custom("MY_TYPE")``: a socket type of the pack's own."""
    return _io_type(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    hidden: list[Hidden] | None = None
    description: str = ""
    is_output_node: bool = False
    is_input_list: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False
    search_aliases: list[str] | None = None
    enable_expand: bool = False
    is_api_node: bool = False


class NodeOutput:
    """``io.NodeOutput(*values, ui=None)``."""

    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self) -> tuple[Any, ...]:
        return self.args


class ComfyNode:
    """Base of a V3 node: ``define_schema`` and ``execute`` are classmethods."""

    hidden: HiddenHolder = HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"{cls.__name__} must define define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError(f"{cls.__name__} must define execute()")


class ComfyExtension:
    """What ``comfy_entrypoint()`` returns: ``get_node_list()`` gives the node classes."""

    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list[type[ComfyNode]]:
        return []


def io_namespace() -> SimpleNamespace:
    """``comfy_api.latest.io``."""
    types = {name: _io_type(io_type) for name, io_type in {
        "Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING", "Model": "MODEL",
        "Clip": "CLIP", "Vae": "VAE", "Int": "INT", "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN",
        "Combo": "COMBO", "Sigmas": "SIGMAS", "Sampler": "SAMPLER", "Guider": "GUIDER", "Noise": "NOISE",
        "AnyType": "*", "ClipVision": "CLIP_VISION", "ControlNet": "CONTROL_NET", "UpscaleModel": "UPSCALE_MODEL",
    }.items()}
    return SimpleNamespace(**types, Custom=Custom, Schema=Schema, NodeOutput=NodeOutput, ComfyNode=ComfyNode,
                           Hidden=Hidden, Input=Input, Output=Output, ComfyExtension=ComfyExtension)


def is_v3(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, ComfyNode)


def from_schema(cls: type, pack: str, display_name: str | None = None) -> PackNode:
    schema = cls.define_schema()
    where = f"{pack}: {schema.node_id}"
    inputs, lazy, raw_links = [], set(), set()
    for item in schema.inputs or []:
        entry = item.entry()
        spec, is_lazy = input_spec(item.id, entry, item.optional, where)
        inputs.append(spec)
        if is_lazy:
            lazy.add(item.id)
        if entry[1].get("rawLink"):
            raw_links.add(item.id)
    outputs = [OutputSpec(str(o.display_name or o.id or o.io_type), o.io_type) for o in schema.outputs or []]
    hidden = tuple((kind.name, kind.value) for kind in schema.hidden or [])
    hidden_names = {name for name, _ in hidden}

    def call(node_id: str, kwargs: dict[str, Any]) -> Any:
        holder = HiddenHolder(**{name: kwargs.pop(name) for name, _ in hidden if name in kwargs})
        bound = type(cls.__name__, (cls,), {"hidden": holder})  # ComfyUI runs each execution on such a copy
        return bound.execute(**kwargs)

    def overridden(name: str) -> Any:
        method = getattr(cls, name, None)
        return method if method is not None and getattr(ComfyNode, name, None) is None else None

    check_lazy = overridden("check_lazy_status")
    return PackNode(
        class_type=schema.node_id, pack=pack, display_name=schema.display_name or display_name or schema.node_id,
        category=schema.category, description=schema.description, inputs=tuple(inputs), outputs=tuple(outputs),
        output_is_list=tuple(bool(o.is_output_list) for o in schema.outputs or []),
        input_is_list=schema.is_input_list, output_node=schema.is_output_node, hidden=hidden, lazy=frozenset(lazy),
        call=call, is_changed=overridden("fingerprint_inputs"), validate=overridden("validate_inputs"),
        check_lazy=(lambda node_id, kwargs: check_lazy(**{k: v for k, v in kwargs.items() if k not in hidden_names}))
        if check_lazy is not None and lazy else None,
        deprecated=schema.is_deprecated, not_idempotent=schema.not_idempotent, raw_links=frozenset(raw_links))
