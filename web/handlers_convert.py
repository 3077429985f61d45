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
from engine.comfyui_graph_export import export_problems
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
            # the editor shows what the file has: muted and bypassed nodes, reroutes, flags and colours
            converted, problems = ui_graph_to_document(workflow, object_info, editor=True)
        elif source == "comfyui-api":
            converted = comfyui_prompt_to_document(workflow)
        else:
            converted = workflow
    else:
        if source == "comfyui-ui":
            converted = workflow
        else:
            converted = prompt_to_ui_graph(workflow, object_info)
            problems = export_problems(workflow, object_info)
    return web.json_response({"workflow": converted, "from": source, "problems": [p.to_dict() for p in problems]})
