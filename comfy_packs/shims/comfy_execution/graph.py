"""``comfy_execution.graph``: what packs import from it (ExecutionBlocker, DynamicPrompt, the
errors)."""

from __future__ import annotations

from comfy_execution.graph_utils import ExecutionBlocker, is_link  # noqa: F401 - re-exported for packs
from comfy_packs.dynprompt import DynamicPrompt, NodeNotFoundError  # noqa: F401 - re-exported for packs


class DependencyCycleError(Exception):
    pass


class NodeInputError(Exception):
    pass
