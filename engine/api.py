"""The node API: a node's typed Python signature is its schema.

A node is a plain function decorated with :func:`node`. Its parameters are its inputs
and its return annotation names its outputs::

    @node("EmptyLatent", category="latent")
    def empty_latent(
        width: Int(min=64, max=8192, step=8) = 512,
        height: Int(min=64, max=8192, step=8) = 512,
    ) -> Out(latent="LATENT"):
        '''An all-zero latent batch (the docstring is the tooltip).'''
        ...

Parameter annotations are either a *socket* (``Socket("MODEL")`` or just the type name
``"MODEL"``), a *widget* (``Int``, ``Float``, ``Text``, ``Bool``, ``Choice``) or
:class:`Context` (injected, not an input). A parameter with a Python default is
optional for sockets and supplies the default for widgets.
"""

from __future__ import annotations

import inspect
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

# Socket type names used by the built-in packs. Types are plain strings so plugins can
# add their own; ANY ("*") accepts every type.
MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
SIGMAS = "SIGMAS"
SAMPLER = "SAMPLER"
GUIDER = "GUIDER"
NOISE = "NOISE"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
ANY = "*"


class NodeDefinitionError(TypeError):
    """A node's signature cannot be turned into a schema."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Socket:
    """A linked input of a given socket type (never a literal)."""

    type: str
    tooltip: str = ""

    def spec_options(self) -> dict[str, Any]:
        return {"tooltip": self.tooltip} if self.tooltip else {}


@dataclass(frozen=True)
class Widget:
    """Base of literal-valued inputs. ``type`` is the socket type a link into it must have."""

    type: str = ""
    default: Any = None
    tooltip: str = ""
    # Listed under "optional" in /object_info: may be left out even without a default (the
    # function's own default applies); ComfyUI's optional widgets, e.g. CLIPLoader's device.
    optional: bool = False
    advanced: bool = False  # ComfyUI's frontend folds it away with the "advanced" inputs

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None when it is."""
        raise NotImplementedError

    def spec_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.default is not None:
            options["default"] = self.default
        if self.tooltip:
            options["tooltip"] = self.tooltip
        if self.advanced:
            options["advanced"] = True
        return options


@dataclass(frozen=True)
class Int(Widget):
    type: str = INT
    default: int | None = None
    min: int | None = None
    max: int | None = None
    step: int = 1
    control_after_generate: bool = False  # editor offers "randomize after queue" (seeds)

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return f"expected an integer, got the float {value!r}; write {int(value)}"
            return f"expected an integer, got {type(value).__name__} {value!r}"
        return _check_range(value, self.min, self.max)

    def spec_options(self) -> dict[str, Any]:
        options = super().spec_options()
        options.update({k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None})
        options["step"] = self.step
        if self.control_after_generate:
            options["control_after_generate"] = True
        return options


@dataclass(frozen=True)
class Float(Widget):
    type: str = FLOAT
    default: float | None = None
    min: float | None = None
    max: float | None = None
    step: float = 0.01
    round: float | None = None

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {type(value).__name__} {value!r}"
        if value != value:  # NaN
            return "expected a number, got NaN"
        return _check_range(value, self.min, self.max)

    def spec_options(self) -> dict[str, Any]:
        options = super().spec_options()
        options.update({k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None})
        options["step"] = self.step
        if self.round is not None:
            options["round"] = self.round
        return options


@dataclass(frozen=True)
class Text(Widget):
    type: str = STRING
    default: str | None = None
    multiline: bool = False
    max_length: int | None = None
    dynamic_prompts: bool = False  # ComfyUI's frontend expands {a|b} choices before queueing

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected text, got {type(value).__name__} {value!r}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"text is {len(value)} characters long; the limit is {self.max_length}"
        return None

    def spec_options(self) -> dict[str, Any]:
        options = super().spec_options()
        if self.multiline:
            options["multiline"] = True
        if self.dynamic_prompts:
            options["dynamicPrompts"] = True
        return options


@dataclass(frozen=True)
class Bool(Widget):
    type: str = BOOLEAN
    default: bool | None = None

    def check(self, value: Any) -> str | None:
        if not isinstance(value, bool):
            return f"expected true or false, got {type(value).__name__} {value!r}"
        return None


@dataclass(frozen=True)
class Choice(Widget):
    """One of a list of strings; ``choices`` may be a callable computed on demand
    (for example the files in ``models/checkpoints``)."""

    type: str = COMBO
    choices: Sequence[str] | Callable[[], Sequence[str]] = ()
    default: str | None = None
    image_upload: bool = False  # the choices are input images: editors offer an upload button

    def spec_options(self) -> dict[str, Any]:
        options = super().spec_options()
        if self.image_upload:
            options["image_upload"] = True
        return options

    def options(self) -> list[str]:
        """The choices as text. A callable that raises an ``Exception`` lets it through as it
        is (validation reports its type and message, as ComfyUI does); one that ends in any
        other way (``sys.exit()``, ``KeyboardInterrupt``, a result that is not a list of
        names) raises :class:`ChoicesUnavailable`, so callers that confine ``Exception`` to
        the node confine these too."""
        if not callable(self.choices):
            return [str(c) for c in self.choices]
        try:
            choices = self.choices()
            if isinstance(choices, (str, bytes)) or not isinstance(choices, Iterable):
                raise ChoicesUnavailable(f"the choice list from {_callable_name(self.choices)} returned "
                                         f"{type(choices).__name__} {choices!r:.80}, not a list of names; "
                                         "fix or remove the plugin that defines it")
            return [str(c) for c in choices]
        except Exception:
            raise
        except BaseException as error:  # noqa: BLE001 - plugin code: SystemExit and the like
            raise ChoicesUnavailable(describe_choices_failure(self, error)) from error

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected one of the choices (text), got {type(value).__name__} {value!r}"
        options = self.options()
        if value not in options:
            shown = ", ".join(repr(o) for o in options[:12]) or "(none available)"
            more = f" and {len(options) - 12} more" if len(options) > 12 else ""
            return f"{value!r} is not among the choices: {shown}{more}"
        return None


class ChoicesUnavailable(RuntimeError):
    """A :class:`Choice` whose callable failed; the message names the callable's module."""


def describe_choices_failure(widget: Widget, error: BaseException) -> str:
    """What went wrong with a widget's choice list, naming the callable (and so the plugin)."""
    if isinstance(error, ChoicesUnavailable):
        return str(error)
    choices = getattr(widget, "choices", None)
    where = _callable_name(choices) if callable(choices) else f"{type(widget).__qualname__}.options"
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"the choice list from {where} raised {detail}; fix or remove the plugin that defines it"


def _callable_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}"


def _check_range(value: float, low: float | None, high: float | None) -> str | None:
    if low is not None and value < low:
        return f"{value!r} is below the minimum {low!r}"
    if high is not None and value > high:
        return f"{value!r} is above the maximum {high!r}"
    return None


class Context:
    """Annotation for the injected run context (see :class:`NodeContext`)."""


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Out:
    """Named outputs: ``Out(latent="LATENT")`` or ``Out(("positive", "CONDITIONING"), ...)``."""

    items: tuple[tuple[str, str], ...]

    def __init__(self, *pairs: tuple[str, str], **named: str) -> None:
        object.__setattr__(self, "items", tuple(pairs) + tuple(named.items()))


@dataclass(frozen=True)
class Result:
    """What an output node may return: output values plus data for the UI (e.g. images)."""

    values: tuple[Any, ...] = ()
    ui: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expand:
    """What a node may return to replace itself by a graph (ComfyUI's ``{"expand": ...}``).

    ``graph`` maps new node ids to ``{"type": ..., "inputs": {...}}`` whose links are
    :class:`~engine.workflow.Link` values (to new nodes or to the workflow's). The scheduler
    runs what ``outputs`` links to (and the new output nodes), then the node's outputs are
    ``outputs`` with every Link (at any depth of tuples and lists) replaced by its value,
    passed through ``finish`` when given. New ids must not clash with existing ones.
    """

    graph: Mapping[str, Mapping[str, Any]]
    outputs: tuple[Any, ...]
    finish: Callable[[tuple[Any, ...]], Any] | None = None
    ui: Mapping[str, Any] = field(default_factory=dict)


class Blocked:
    """An output value that stops every node reading it (ComfyUI's ``ExecutionBlocker``).

    A node given a Blocked input does not run: all its outputs are Blocked too, and output
    nodes produce nothing. With a ``message`` the first node it reaches is reported
    (``node_blocked`` event, :attr:`RunResult.blocked`) and passes it on silently; with None
    it is silent throughout. The run itself still succeeds.
    """

    __slots__ = ("message",)

    def __init__(self, message: str | None = None) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"Blocked({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Blocked, (self.message,))


class ItemList(list):
    """A value that is a list of items (ComfyUI's list outputs: ``OUTPUT_IS_LIST``, or a node
    mapped over such a list). A node that reads one runs once per item unless its spec says
    ``input_is_list`` (the shorter lists repeat their last item); its outputs are then
    ItemLists of the per-item outputs."""


# --------------------------------------------------------------------------- run context


class Cancelled(Exception):
    """Raised inside a node when the run was cancelled."""


@dataclass(frozen=True)
class Progress:
    value: float
    max: float
    preview: Any = None  # a PIL image or anything the listener knows how to render


class NodeContext:
    """Handed to nodes that ask for it: report progress, see cancellation.

    ``progress(value, max, preview=None)`` emits a progress event; ``check_cancelled()``
    raises :class:`Cancelled` when the run was cancelled; ``cancelled`` just tells.

    Interrupting is cooperative: a node that runs long must call one of these in its loop
    (every step, or every ~0.1 s). Python cannot stop a thread from outside, so a pure-Python
    loop that never checks cannot be interrupted: the interrupt takes effect when it returns
    (or at the next node). Either way the run ends as interrupted or failed and the queue
    moves on to the next prompt; it is never left wedged.
    """

    def __init__(
        self,
        node_id: str,
        cancel_event: threading.Event,
        on_progress: Callable[[str, Progress], None],
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self._cancel_event = cancel_event
        self._on_progress = on_progress
        self.services: Mapping[str, Any] = services or {}

    @property
    def cancelled(self) -> bool:
        return self._cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self._cancel_event.is_set():
            raise Cancelled(f"run cancelled while node {self.node_id} was running")

    def progress(self, value: float, max: float, preview: Any = None) -> None:
        self.check_cancelled()
        self._on_progress(self.node_id, Progress(value, max, preview))


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # socket type name; widgets use their value type (INT, FLOAT, ..., COMBO)
    widget: Widget | None  # None for sockets
    required: bool
    default: Any = None
    tooltip: str = ""

    @property
    def is_widget(self) -> bool:
        return self.widget is not None


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: str


@dataclass(frozen=True)
class NodeSpec:
    """Everything the engine knows about a node type; built from the function signature."""

    id: str
    function: Callable[..., Any]
    display_name: str
    category: str
    description: str
    version: int
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    output_node: bool = False
    pure: bool = True
    fingerprint: Callable[..., Any] | None = None
    context_param: str | None = None
    # Catalogue-only marks (see ``node``): ComfyUI's "deprecated" flag, its hidden inputs
    # (name -> kind, e.g. ("prompt", "PROMPT")), and ``compat`` naming the interface a
    # compatibility node reproduces ("comfyui"), so editors can list those apart.
    deprecated: bool = False
    hidden: tuple[tuple[str, str], ...] = ()
    compat: str | None = None
    # Resource/consistency check run at validation on the literal inputs (see
    # ``engine.validation.NodeCheck``); plain callable, no torch. Packs attach it with replace().
    check: Callable[..., Any] | None = None
    # Lazy inputs (ComfyUI's ``{"lazy": True}``): their upstream nodes run only when
    # ``check_lazy(**arguments)`` (the function's arguments so far, None for the lazy inputs
    # not evaluated yet) names them; it is asked again until it names nothing new. Names of
    # inputs that are not lazy, not linked or already evaluated are ignored.
    lazy: frozenset[str] = frozenset()
    check_lazy: Callable[..., Any] | None = None
    # List semantics (see :class:`ItemList`): ``input_is_list`` nodes get every input as a
    # list (a single value as a list of one) and are called once; ``output_is_list[i]`` marks
    # an output the function returns as a list of items.
    input_is_list: bool = False
    output_is_list: tuple[bool, ...] = ()
    # The function maps lists itself and returns outputs already merged (ComfyUI packs'
    # wrappers): the scheduler hands it ItemLists as they are.
    maps_lists: bool = False
    # Inputs handed to the function as the link itself (``Link(node id, output index)``),
    # not its value; their sources still run first (ComfyUI's ``rawLink``).
    raw_links: frozenset[str] = frozenset()

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output_index(self, ref: str | int) -> int | None:
        """Index of an output given by name or index, or None if there is none."""
        if isinstance(ref, bool):
            return None
        if isinstance(ref, int):
            return ref if 0 <= ref < len(self.outputs) else None
        for index, output in enumerate(self.outputs):
            if output.name == ref:
                return index
        if ref.isdigit() and int(ref) < len(self.outputs):
            return int(ref)
        return None

    def with_id(self, node_id: str) -> "NodeSpec":
        from dataclasses import replace

        return replace(self, id=node_id)


def node(
    id: str,
    *,
    display_name: str | None = None,
    category: str = "misc",
    version: int = 1,
    output: bool = False,
    pure: bool = True,
    fingerprint: Callable[..., Any] | None = None,
    description: str | None = None,
    deprecated: bool = False,
    hidden: Mapping[str, str] | None = None,
    compat: str | None = None,
    lazy: Sequence[str] = (),
    check_lazy: Callable[..., Any] | None = None,
    input_is_list: bool = False,
    output_is_list: Sequence[bool] = (),
) -> Callable[[Callable[..., Any]], NodeSpec]:
    """Turn a typed function into a :class:`NodeSpec`.

    ``output=True`` marks a node with side effects (SaveImage); ``pure=False`` makes it
    re-run every time; ``fingerprint(**literal_inputs)`` instead re-runs it only when the
    returned value changes (e.g. a file's modification time). ``deprecated``, ``hidden``
    (ComfyUI's hidden inputs, e.g. ``{"prompt": "PROMPT"}``; ours come through the
    :class:`Context`) and ``compat`` only mark the node in the catalogue. ``lazy`` names
    inputs evaluated only when ``check_lazy`` asks for them; ``input_is_list`` and
    ``output_is_list`` give ComfyUI's list semantics (see :class:`NodeSpec`).
    """

    def decorate(function: Callable[..., Any]) -> NodeSpec:
        # The scope the decorator is applied in: under `from __future__ import annotations`
        # a local used only in an annotation is neither a global nor a closure variable.
        caller = sys._getframe(1)
        return _build_spec(
            function,
            scope=dict(caller.f_locals) if caller.f_code is not None else {},
            node_id=id,
            display_name=display_name or _humanize(id.rsplit(".", 1)[-1]),
            category=category,
            version=version,
            output_node=output,
            pure=pure,
            fingerprint=fingerprint,
            description=description if description is not None else inspect.getdoc(function) or "",
            deprecated=deprecated,
            hidden=tuple((hidden or {}).items()),
            compat=compat,
            lazy=frozenset(lazy),
            check_lazy=check_lazy,
            input_is_list=input_is_list,
            output_is_list=tuple(bool(v) for v in output_is_list),
        )

    return decorate


_SOCKET_NAME = re.compile(r"[A-Z][A-Z0-9_]*(,[A-Z][A-Z0-9_]*)*|\*")


def _humanize(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append(" ")
        out.append(ch)
    return "".join(out).replace("_", " ").strip()


def _build_spec(function: Callable[..., Any], *, node_id: str, scope: dict[str, Any] | None = None,
                **kwargs: Any) -> NodeSpec:
    where = f"node {node_id!r} ({function.__module__}.{function.__qualname__})"
    signature = inspect.signature(function)
    namespace = {**function.__globals__, **(scope or {})}
    if function.__closure__:
        namespace.update(zip(function.__code__.co_freevars,
                             (cell.cell_contents for cell in function.__closure__)))

    def resolve(annotation: Any) -> Any:
        if annotation == "ANY":  # the constant's name under `from __future__ import annotations`
            return ANY
        # A bare socket name ("MODEL") is a socket; other strings come from
        # `from __future__ import annotations` and are evaluated in the module's namespace.
        if isinstance(annotation, str) and not _SOCKET_NAME.fullmatch(annotation):
            try:
                return eval(annotation, namespace)  # noqa: S307 - the node author's own annotation
            except Exception as error:
                raise NodeDefinitionError(f"{where}: cannot evaluate annotation {annotation!r}: {error}") from error
        return annotation
    inputs: list[InputSpec] = []
    context_param: str | None = None
    for name, param in signature.parameters.items():
        annotation = resolve(param.annotation)
        has_default = param.default is not inspect.Parameter.empty
        if annotation is Context or annotation == "Context":
            context_param = name
            continue
        if isinstance(annotation, str) and _SOCKET_NAME.fullmatch(annotation):
            annotation = Socket(annotation)
        if isinstance(annotation, Socket):
            inputs.append(
                InputSpec(name, annotation.type, None, required=not has_default,
                          default=param.default if has_default else None, tooltip=annotation.tooltip)
            )
        elif isinstance(annotation, Widget):
            default = param.default if has_default else annotation.default
            # Choices computed on demand (model folders, the sampler table) are not read here:
            # defining a node must stay cheap and import nothing heavy.
            if default is not None and not callable(getattr(annotation, "choices", None)):
                problem = annotation.check(default)
                if problem:
                    raise NodeDefinitionError(f"{where}: default of input {name!r}: {problem}")
            inputs.append(
                InputSpec(name, annotation.type, annotation, required=default is None and not annotation.optional,
                          default=default, tooltip=annotation.tooltip)
            )
        else:
            raise NodeDefinitionError(
                f"{where}: input {name!r} has annotation {annotation!r}; annotate it with a socket "
                f"type such as \"MODEL\" / Socket(\"MODEL\"), a widget (Int, Float, Text, Bool, Choice) "
                f"or Context"
            )
    outputs = _parse_outputs(resolve(signature.return_annotation), where)
    return NodeSpec(id=node_id, function=function, inputs=tuple(inputs), outputs=outputs,
                    context_param=context_param, **kwargs)


def _parse_outputs(annotation: Any, where: str) -> tuple[OutputSpec, ...]:
    if annotation is inspect.Signature.empty or annotation is None or annotation == "None":
        return ()
    if isinstance(annotation, str):
        return (OutputSpec(annotation.lower(), annotation),)
    if isinstance(annotation, Out):
        return tuple(OutputSpec(name, type_) for name, type_ in annotation.items)
    if isinstance(annotation, Iterable):
        return tuple(OutputSpec(str(t).lower(), str(t)) for t in annotation)
    raise NodeDefinitionError(
        f"{where}: return annotation {annotation!r} must be a socket type name, Out(name=TYPE, ...) or None"
    )
