"""ComfyUI's node classes as our :class:`engine.api.NodeSpec`.

Both of ComfyUI's APIs reduce to a :class:`PackNode` (the class API here, the V3 schema API
in :mod:`comfy_packs.v3`), which :func:`to_spec` turns into a NodeSpec whose function

- fills the hidden inputs (PROMPT, EXTRA_PNGINFO, UNIQUE_ID) from the run context;
- converts our values to ComfyUI's (:mod:`comfy_packs.values`) and back;
- maps the node over list inputs as ComfyUI does: without ``INPUT_IS_LIST`` the node runs once
  per item (the shorter lists repeat their last item), outputs are collected into lists,
  ``OUTPUT_IS_LIST`` outputs concatenated; a list of one is handed on as its item;
- declares the lazy inputs and wraps ``check_lazy_status`` for the scheduler, which runs a
  lazy input's upstream nodes only when it is asked for (None until then); calls
  ``VALIDATE_INPUTS``;
- hands ``{"expand": graph}`` results (GraphBuilder's) to the scheduler as an
  :class:`engine.api.Expand` and ExecutionBlocker (:class:`engine.api.Blocked`) through;
- fails the run with the pack's name in the message when the pack's code raises.

``IS_CHANGED`` becomes the spec's fingerprint (part of the cache key); NaN, or an
``IS_CHANGED`` that raises, means "changed" on every run, as in ComfyUI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from engine.api import ANY, Blocked, Bool, Cancelled, Choice, Float, InputSpec, Int, NodeSpec, OutputSpec, Text, Widget
from engine.workflow import Link
from comfy_packs import state
from comfy_packs.imports import guarded
from comfy_packs.results import Normalized, expansion, merge, normalize
from comfy_packs.values import ComfyList, is_nan, to_comfy

log = logging.getLogger(__name__)

CONTEXT = "_latentflow_ctx"
HIDDEN_KINDS = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG")
INPUT_SECTIONS = ("required", "optional")


class PackNodeError(RuntimeError):
    """A pack's node raised; the message names the pack and the node class."""


@dataclass(frozen=True)
class PackNode:
    """One ComfyUI node class, whatever its API."""

    class_type: str
    pack: str
    display_name: str
    category: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    output_is_list: tuple[bool, ...]
    input_is_list: bool
    output_node: bool
    hidden: tuple[tuple[str, str], ...]
    lazy: frozenset[str]
    call: Callable[[str, dict[str, Any]], Any]  # (node id, inputs) -> the node's raw result
    is_changed: Callable[..., Any] | None = None
    validate: Callable[..., Any] | None = None
    check_lazy: Callable[[str, dict[str, Any]], Any] | None = None
    deprecated: bool = False
    not_idempotent: bool = False
    raw_links: frozenset[str] = frozenset()  # inputs given as the link itself, [node id, output]


# --------------------------------------------------------------------------- the class API


def from_class(class_type: str, cls: type, pack: str, display_name: str | None) -> PackNode:
    """A class of ``NODE_CLASS_MAPPINGS`` (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...)."""
    where = f"{pack}: {class_type}"
    declared = call_input_types(cls, where)
    function_name = getattr(cls, "FUNCTION", None)
    if not isinstance(function_name, str) or not callable(getattr(cls, function_name, None)):
        raise TypeError(f"{where}: FUNCTION must name a method of the class, got {function_name!r}")
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    validated = _parameters(validate) if validate is not None else set()
    inputs, lazy, raw_links = [], set(), set()
    hidden_kinds = {name: kind for name, kind in (declared.get("hidden") or {}).items()}
    # a hidden entry that is a type, not a kind (PROMPT, ...), is an input only a prompt or an
    # expansion sets: an optional input here
    typed_hidden = {name: entry for name, entry in hidden_kinds.items() if isinstance(entry, (list, tuple))}
    for section in (*INPUT_SECTIONS, "hidden"):
        entries = typed_hidden if section == "hidden" else (declared.get(section) or {})
        for name, entry in entries.items():
            item, is_lazy = input_spec(name, entry, section != "required", where,
                                       refresh=_combo_refresher(cls, section, name))
            if _option(entry, "rawLink"):
                raw_links.add(name)
            if name in validated and item.widget is not None:
                item = dataclasses.replace(item, widget=_validated_widget(item.widget, validate, name, validated))
            inputs.append(item)
            if is_lazy:
                lazy.add(name)
    return_types = tuple(_type_name(t) for t in getattr(cls, "RETURN_TYPES", ()) or ())
    names = tuple(getattr(cls, "RETURN_NAMES", None) or return_types)
    output_is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(return_types))
    instances: dict[str, Any] = {}
    lock = threading.Lock()

    def instance(node_id: str) -> Any:
        with lock:  # ComfyUI keeps one object per node id across runs; stateful nodes rely on it
            if node_id not in instances:
                instances[node_id] = cls()
            return instances[node_id]

    def call(node_id: str, kwargs: dict[str, Any]) -> Any:
        return getattr(instance(node_id), function_name)(**kwargs)

    check_lazy = None
    if lazy and callable(getattr(cls, "check_lazy_status", None)):
        def check_lazy(node_id: str, kwargs: dict[str, Any]) -> Any:
            return instance(node_id).check_lazy_status(**kwargs)

    return PackNode(
        class_type=class_type, pack=pack, display_name=display_name or getattr(cls, "DISPLAY_NAME", None) or class_type,
        category=str(getattr(cls, "CATEGORY", "") or "custom"), description=str(getattr(cls, "DESCRIPTION", "") or ""),
        inputs=tuple(inputs), outputs=tuple(OutputSpec(str(n), t) for n, t in zip(names, return_types)),
        output_is_list=tuple(bool(v) for v in output_is_list), input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        hidden=tuple((name, str(kind)) for name, kind in hidden_kinds.items() if name not in typed_hidden),
        raw_links=frozenset(raw_links),
        lazy=frozenset(lazy), call=call, is_changed=getattr(cls, "IS_CHANGED", None), validate=validate,
        check_lazy=check_lazy, deprecated=bool(getattr(cls, "DEPRECATED", False)),
        not_idempotent=bool(getattr(cls, "NOT_IDEMPOTENT", False)))


def _option(entry: Any, key: str) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], Mapping) \
        and bool(entry[1].get(key))


def call_input_types(cls: type, where: str) -> Mapping[str, Any]:
    declared = cls.INPUT_TYPES()
    if not isinstance(declared, Mapping):
        raise TypeError(f"{where}: INPUT_TYPES() must return a dict with 'required'/'optional'/'hidden', "
                        f"got {type(declared).__name__}")
    return declared


def _combo_refresher(cls: type, section: str, name: str) -> Callable[[], Any]:
    """Choices as INPUT_TYPES gives them now (packs list files there)."""
    def choices() -> list[Any]:
        entry = (cls.INPUT_TYPES().get(section) or {}).get(name) or ((),)
        kind = entry[0]
        if isinstance(kind, (list, tuple)):
            return list(kind)
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
        return list(options.get("options") or ())

    return choices


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PackChoice(Choice):
    """A ComfyUI combo: its items may be numbers, and the list is asked for anew each time."""

    def check(self, value: Any) -> str | None:
        raw = self.choices() if callable(self.choices) else self.choices
        if value in list(raw):
            return None
        return super().check(value)


def input_spec(name: str, entry: Any, optional: bool, where: str,
               refresh: Callable[[], Any] | None = None) -> tuple[InputSpec, bool]:
    """One entry of INPUT_TYPES, ``(TYPE, {options})``, as our InputSpec; and whether it is lazy."""
    if isinstance(entry, str):
        entry = (entry,)
    if not isinstance(entry, (list, tuple)) or not entry:
        raise TypeError(f"{where}: input {name!r} must be (TYPE, {{options}}), got {entry!r}")
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    tooltip = str(options.get("tooltip") or "")
    default = options.get("default")
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        items = list(kind) if isinstance(kind, (list, tuple)) else list(options.get("options") or ())
        if default is None and items:
            default = items[0]
        widget: Widget | None = PackChoice(choices=refresh or tuple(items), default=_combo_default(default),
                                           tooltip=tooltip, optional=optional,
                                           image_upload=bool(options.get("image_upload")))
        type_name = "COMBO"
    else:
        type_name = _type_name(kind)
        widget = None if options.get("forceInput") else _widget(type_name, options, default, tooltip, optional)
    if widget is not None:
        required = not optional and default is None
        return InputSpec(name, type_name, widget, required, default, tooltip), bool(options.get("lazy"))
    return InputSpec(name, type_name, None, not optional, None, tooltip), bool(options.get("lazy"))


def _combo_default(default: Any) -> Any:
    return default if isinstance(default, str) else (str(default) if default is not None else None)


def _widget(type_name: str, options: Mapping[str, Any], default: Any, tooltip: str, optional: bool) -> Widget | None:
    common = dict(tooltip=tooltip, optional=optional)
    number = lambda key: options.get(key) if isinstance(options.get(key), (int, float)) and \
        not isinstance(options.get(key), bool) else None  # noqa: E731
    if type_name == "INT":
        step = number("step")
        return Int(default=default, min=number("min"), max=number("max"), step=int(step) if step else 1,
                   control_after_generate=bool(options.get("control_after_generate")), **common)
    if type_name == "FLOAT":
        step = number("step")
        return Float(default=default, min=number("min"), max=number("max"), step=step or 0.01, round=number("round"),
                     **common)
    if type_name == "STRING":
        return Text(default=default, multiline=bool(options.get("multiline")),
                    dynamic_prompts=bool(options.get("dynamicPrompts")), **common)
    if type_name == "BOOLEAN":
        return Bool(default=default, **common)
    return None


def _type_name(kind: Any) -> str:
    """A socket type: packs' "any" types (a str whose ``!=`` is always False) are ours ANY."""
    if isinstance(kind, enum.Enum):  # comfy.comfy_types.IO.IMAGE
        kind = kind.value
    if isinstance(kind, str) and not (kind != "latentflow: a type no pack names"):
        return ANY
    return str(kind)


def _parameters(function: Callable[..., Any]) -> set[str]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"s", "cls", "self"}


def _validated_widget(widget: Widget, validate: Callable[..., Any], name: str, parameters: set[str]) -> Widget:
    """An input VALIDATE_INPUTS checks: ComfyUI then skips its own checks of it. When the
    input is all VALIDATE_INPUTS takes it runs here, at validation; else when the node runs."""
    def check(self: Widget, value: Any) -> str | None:
        if parameters - {name, "input_types"}:
            return None
        return validation_problem(validate, {name: value})

    subclass = type(f"Validated{type(widget).__name__}", (type(widget),), {"check": check})
    return subclass(**{f.name: getattr(widget, f.name) for f in dataclasses.fields(widget)})


def validation_problem(validate: Callable[..., Any], values: Mapping[str, Any]) -> str | None:
    accepted = _parameters(validate)
    takes_all = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(validate).parameters.values())
    arguments = {k: v for k, v in values.items() if takes_all or k in accepted}
    if "input_types" in accepted:
        arguments["input_types"] = {}
    result = run_maybe_async(validate(**arguments))
    if result is True:
        return None
    return str(result) if result not in (False, None) else "VALIDATE_INPUTS refused the inputs"


# --------------------------------------------------------------------------- the spec


def to_spec(pack_node: PackNode) -> NodeSpec:
    node = pack_node
    where = f"custom_nodes/{node.pack}: {node.class_type}"
    node_inputs = {item.name: item for item in node.inputs}

    def comfy_inputs(inputs: dict[str, Any]) -> tuple[Any, dict[str, list[Any]]]:
        """(the run context, each input as ComfyUI's list of values)."""
        ctx = inputs.pop(CONTEXT, None)
        # ComfyUI leaves out optional inputs that are not given (the method's defaults apply);
        # a lazy input not evaluated (yet) is given as None
        provided = {k: v for k, v in inputs.items()
                    if v is not None or node_inputs[k].required or k in node.lazy}
        for name, kind in node.hidden:
            provided[name] = hidden_value(kind, ctx)
        return ctx, {name: [to_comfy(v) for v in value] if isinstance(value, ComfyList)
                     else [[value.node_id, value.output]] if isinstance(value, Link) else [to_comfy(value)]
                     for name, value in provided.items()}

    def run(**inputs: Any) -> Any:
        ctx, lists = comfy_inputs(inputs)
        node_id = ctx.node_id if ctx is not None else "?"
        try:
            with state.run_as(ctx, node.pack, node.class_type), guarded():
                calls = _calls(lists, node.input_is_list)
                if node.validate is not None and calls:
                    problem = validation_problem(node.validate, calls[0])
                    if problem:
                        raise ValueError(f"VALIDATE_INPUTS: {problem}")
                results = []
                for index, kwargs in enumerate(calls):
                    blocker = _blocked(kwargs, node.input_is_list)
                    if blocker is not None:  # ComfyUI: this call's outputs are all the blocker
                        results.append(Normalized((blocker,) * len(node.outputs), None))
                        continue
                    state.graph_prefix.set((node_id, index, 0))
                    results.append(normalize(run_maybe_async(node.call(node_id, kwargs)), len(node.outputs), where))
        except Cancelled:
            raise
        except Exception as error:
            raise PackNodeError(f"{where} raised {type(error).__name__}: {error}") from error
        if any(result.graph is not None for result in results):
            return expansion(results, node, where)
        return merge(results, node, where)

    def check_lazy(**inputs: Any) -> list[str]:
        ctx, lists = comfy_inputs(inputs)
        node_id = ctx.node_id if ctx is not None else "?"
        names: list[str] = []
        try:
            with state.run_as(ctx, node.pack, node.class_type), guarded():
                for kwargs in _calls(lists, node.input_is_list):
                    if _blocked(kwargs, node.input_is_list) is None:
                        answer = run_maybe_async(node.check_lazy(node_id, dict(kwargs)))  # type: ignore[misc]
                        names.extend(answer if isinstance(answer, (list, tuple)) else [])
        except Cancelled:
            raise
        except Exception as error:
            raise PackNodeError(f"{where}: check_lazy_status raised {type(error).__name__}: {error}") from error
        return names

    def fingerprint(**literals: Any) -> Any:
        try:
            token = run_maybe_async(_call_is_changed(node.is_changed, literals))
        except Exception as error:  # ComfyUI: an IS_CHANGED that raises means "changed"
            log.warning("%s: IS_CHANGED raised %s: %s; the node runs every time", where, type(error).__name__, error)
            return uuid.uuid4().hex
        return uuid.uuid4().hex if is_nan(token) else token

    return NodeSpec(
        id=node.class_type, function=run, display_name=node.display_name, category=node.category,
        description=node.description, version=1, inputs=node.inputs, outputs=node.outputs,
        output_node=node.output_node, pure=not node.not_idempotent,
        fingerprint=fingerprint if node.is_changed is not None else None, context_param=CONTEXT,
        deprecated=node.deprecated, hidden=node.hidden, lazy=node.lazy, raw_links=node.raw_links,
        check_lazy=check_lazy if node.check_lazy is not None and node.lazy else None,
        input_is_list=node.input_is_list, output_is_list=node.output_is_list, maps_lists=True)


def _blocked(kwargs: Mapping[str, Any], input_is_list: bool) -> Blocked | None:
    for value in kwargs.values():
        for item in (value if input_is_list else (value,)):
            if isinstance(item, Blocked):
                return item
    return None


def _call_is_changed(is_changed: Callable[..., Any], literals: Mapping[str, Any]) -> Any:
    parameters = inspect.signature(is_changed).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return is_changed(**literals)
    return is_changed(**{k: v for k, v in literals.items() if k in parameters})


def hidden_value(kind: str, ctx: Any) -> Any:
    services = ctx.services if ctx is not None else {}
    if kind == "UNIQUE_ID":
        return ctx.node_id if ctx is not None else None
    if kind == "PROMPT":
        prompt = services.get("prompt")
        if prompt is None and services.get("workflow_document") is not None:
            from nodes.images import comfy_prompt

            prompt = comfy_prompt(services["workflow_document"])
        return prompt
    if kind == "EXTRA_PNGINFO":
        return services.get("extra_pnginfo")
    if kind == "DYNPROMPT":
        from comfy_packs.dynprompt import DynamicPrompt

        return DynamicPrompt(services.get("run_graph"), hidden_value("PROMPT", ctx))
    return None  # API keys: nothing here provides them


def _calls(lists: Mapping[str, list[Any]], input_is_list: bool) -> list[dict[str, Any]]:
    if input_is_list:
        return [dict(lists)]
    if not lists:
        return [{}]
    if any(len(v) == 0 for v in lists.values()):
        return []
    count = max(len(v) for v in lists.values())
    return [{k: v[min(i, len(v) - 1)] for k, v in lists.items()} for i in range(count)]


def run_maybe_async(value: Any) -> Any:
    """ComfyUI allows ``async def`` node functions: run one to completion on this thread."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(value))
    box: dict[str, Any] = {}

    def work() -> None:  # a loop runs on this thread already (a test, a handler): use another thread
        try:
            box["value"] = asyncio.run(_await(value))
        except BaseException as error:  # re-raised on the calling thread
            box["error"] = error

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _await(value: Any) -> Any:
    return await value
