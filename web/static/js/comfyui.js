// ComfyUI's UI-format workflows (what its frontend saves: {nodes: [...], links: [...]}) in the
// editor. The conversion itself is the server's (POST /api/convert, engine/comfyui_graph.py),
// so the editor, the CLI and the API map widgets, reroutes, primitives and bypasses alike.

/** Is `doc` a UI-format graph? (Our format has a `nodes` object, an API prompt no `nodes`.) */
export function isUiGraph(doc) {
  return !!doc && typeof doc === "object" && Array.isArray(doc.nodes);
}

/** One line per problem: where, what, how to fix it. */
export function describeProblem(problem) {
  let where = problem.node_id ? `node ${problem.node_id}${problem.node_type ? ` (${problem.node_type})` : ""}` : "";
  if (problem.input) where += ` input '${problem.input}'`;
  return `${where ? `${where}: ` : ""}${problem.message}${problem.hint ? ` (fix: ${problem.hint})` : ""}`;
}

/** Problems grouped per node, in the shape GraphView.setErrors takes. */
export function problemsByNode(problems, nodeIds) {
  const byNode = {};
  for (const problem of problems) {
    if (!problem.node_id || !nodeIds.has(String(problem.node_id))) continue;
    (byNode[problem.node_id] ??= []).push({ message: problem.message, input: problem.input, hint: problem.hint });
  }
  return byNode;
}

/** Download `data` as a JSON file. */
export function downloadJson(data, filename) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: filename });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
