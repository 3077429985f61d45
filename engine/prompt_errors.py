"""A validation report as ComfyUI's ``POST /prompt`` 400 body (pure data, no aiohttp).

ComfyUI answers a prompt it refuses with::

    {"error": {"type", "message", "details", "extra_info"},
     "node_errors": {node_id: {"errors": [{"type", "message", "details",
                                           "extra_info": {"input_name", ...}}],
                               "dependent_outputs": [output node ids],
                               "class_type": ...}}}

Its frontend marks the nodes in ``node_errors`` and the inputs named by ``input_name``,
and re-scans for missing node packs when ``error.type`` is ``missing_node_type``. The
error type names come from :attr:`engine.validation.ValidationError.error_type`.
"""

from __future__ import annotations

from typing import Any

from engine.validation import ValidationError, ValidationReport, _topological_order
from engine.workflow import Link

# Top-level errors that are about the whole prompt, in the order they win the summary.
_PROMPT_LEVEL = ("invalid_prompt", "prompt_no_outputs")


def comfyui_error_body(report: ValidationReport) -> dict[str, Any]:
    """The 400 body for a report with errors: a summary ``error`` plus ``node_errors``.

    The summary is the first ``missing_node_type`` problem when there is one (so the
    frontend offers to install what is missing), else a problem about the whole prompt
    (``prompt_no_outputs``, ``invalid_prompt``), else ``prompt_outputs_failed_validation``
    listing every problem's ``message: details``.
    """
    errors = report.errors
    dependents = _dependent_outputs(report)
    node_errors: dict[str, dict[str, Any]] = {}
    general: list[dict[str, Any]] = []
    for problem in errors:
        shaped = problem.comfyui_error()
        if problem.node_id is None:
            general.append(shaped)
            continue
        entry = node_errors.setdefault(problem.node_id, {
            "errors": [], "dependent_outputs": dependents.get(problem.node_id, []),
            "class_type": problem.node_type})
        entry["errors"].append(shaped)
    summary = _summary(errors, general, node_errors, report.omitted_errors)
    if report.omitted:
        # Past MAX_PROBLEMS_PER_CODE of a kind, problems are counted, not listed: the body stays
        # bounded (a 50k-node prompt with 25k broken links answers in kilobytes, not megabytes).
        summary["omitted"] = [{"severity": severity, "code": code, "count": count}
                              for severity, code, count in report.omitted]
    return {"error": summary, "node_errors": node_errors}


def _summary(errors: list[ValidationError], general: list[dict[str, Any]],
             node_errors: dict[str, dict[str, Any]], omitted: int = 0) -> dict[str, Any]:
    missing = [p for p in errors if p.error_type == "missing_node_type"]
    if missing:
        first = missing[0].comfyui_error()
        if len(missing) > 1:
            first["message"] += f" (and {len(missing) - 1} more node{'s' * (len(missing) > 2)} of unknown type)"
        return {**first, "errors": general}
    for kind in _PROMPT_LEVEL:
        for shaped in general:
            if shaped["type"] == kind:
                return {**shaped, "errors": general}
    count = len(errors) + omitted
    lines = [f"{p.message}: {p.details if p.details is not None else (p.input or '')}" for p in errors]
    unlisted = f" ({omitted} not listed: fix these and validate again)" if omitted else ""
    return {"type": "prompt_outputs_failed_validation",
            "message": f"Prompt outputs failed validation: {count} problem{'s' * (count != 1)}{unlisted}; "
                       "nothing was queued",
            "details": "\n".join(lines), "extra_info": {}, "errors": general,
            "nodes": sorted(node_errors)}


MAX_DEPENDENT_OUTPUTS = 20  # per node; a node feeding thousands of outputs lists the first ones


def _dependent_outputs(report: ValidationReport) -> dict[str, list[str]]:
    """node id -> the output nodes that read from it, directly or not (itself included), for
    the nodes with listed errors. One pass in reverse topological order, each set capped at
    MAX_DEPENDENT_OUTPUTS: linear in the workflow (a walk per output was quadratic)."""
    workflow = report.workflow
    if workflow is None or not report.outputs:
        return {}
    wanted = {p.node_id for p in report.errors if p.node_id is not None}
    outputs = set(report.outputs)
    order, _ = _topological_order(workflow)
    reach: dict[str, list[str]] = {}
    for node_id in reversed(order):
        found = reach.get(node_id)
        if node_id in outputs:
            found = [node_id] + [o for o in found or () if o != node_id][:MAX_DEPENDENT_OUTPUTS - 1]
            reach[node_id] = found
        if not found:
            continue
        for value in workflow.nodes[node_id].inputs.values():
            if isinstance(value, Link) and value.node_id in workflow.nodes:
                into = reach.setdefault(value.node_id, [])
                if len(into) < MAX_DEPENDENT_OUTPUTS:
                    into.extend(o for o in found[:MAX_DEPENDENT_OUTPUTS - len(into)] if o not in into)
    position = {output: index for index, output in enumerate(report.outputs)}
    return {node_id: sorted(reach[node_id], key=position.__getitem__) for node_id in wanted if reach.get(node_id)}
