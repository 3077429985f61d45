"""``POST /api/convert``: ComfyUI's UI-format workflows <-> our document, for the editor.

Body ``{"to": "latentflow" | "comfyui", "workflow": {...}}``. To ``latentflow``, the workflow
may be a ComfyUI UI graph, a ComfyUI API prompt or our document; to ``comfyui``, our document
or an API prompt. The answer is ``{"workflow": ..., "from": ..., "problems": [...]}``, each
problem naming the node id, its type, the input and how to fix it. The conversion itself
lives in :mod:`engine.comfyui_graph` (one implementation for the CLI and the editor).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from engine.comfyui_graph import GraphProblem, is_ui_graph, prompt_to_ui_graph, ui_graph_to_document
from engine.workflow import comfyui_prompt_to_document, is_comfyui_prompt
from web.keys import REGISTRY

routes = web.RouteTableDef()
TARGETS = ("latentflow", "comfyui")


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": {"type": "bad_convert_request", "message": message}}, status=400)


def _source_format(workflow: Any) -> str:
    if is_ui_graph(workflow):
        return "comfyui-ui"
    if is_comfyui_prompt(workflow):
        return "comfyui-api"
    return "latentflow"


@routes.post("/api/convert")
async def convert_workflow(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.text() or "null")
    except json.JSONDecodeError as error:
        return _bad_request(f"the request body is not valid JSON: {error}")
    if not isinstance(body, dict) or body.get("to") not in TARGETS or not isinstance(body.get("workflow"), dict):
        return _bad_request('send {"to": "latentflow" or "comfyui", "workflow": {...}} '
                            f"(got {type(body).__name__} with to={body.get('to') if isinstance(body, dict) else None!r})")
    workflow, target = body["workflow"], body["to"]
    source = _source_format(workflow)
    object_info = request.app[REGISTRY].object_info()
    problems: list[GraphProblem] = []
    if target == "latentflow":
        if source == "comfyui-ui":
            converted, problems = ui_graph_to_document(workflow, object_info)
        elif source == "comfyui-api":
            converted = comfyui_prompt_to_document(workflow)
        else:
            converted = workflow
    else:
        if source == "comfyui-ui":
            converted = workflow
        else:
            converted = prompt_to_ui_graph(workflow, object_info)
            problems = _export_problems(workflow, object_info)
    return web.json_response({"workflow": converted, "from": source, "problems": [p.to_dict() for p in problems]})


def _export_problems(workflow: dict[str, Any], object_info: dict[str, Any]) -> list[GraphProblem]:
    """Nodes the catalogue does not know go out without widget names: say so."""
    document = comfyui_prompt_to_document(workflow) if is_comfyui_prompt(workflow) else workflow
    nodes = document.get("nodes") if isinstance(document.get("nodes"), dict) else {}
    return [GraphProblem(f"node type {entry.get('type')!r} is not in the node catalogue; its values were written "
                         "in document order and ComfyUI may not place them", str(node_id), str(entry.get("type")),
                         hint="install the node pack that provides it, or replace the node",
                         severity="warning", code="unknown_type")
            for node_id, entry in nodes.items()
            if isinstance(entry, dict) and entry.get("type") not in object_info]
