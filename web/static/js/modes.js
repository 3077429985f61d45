// Node modes: a muted node is left out of the prompt; a bypassed node is left out and hands
// one of its inputs to each consumer of its outputs. The rules are engine/comfyui_graph.py's
// (ComfyUI's frontend): the input in the output's slot when its type fits, else the first input
// of exactly the wanted type, else the first that fits. The editor applies them before it
// sends, so the server sees only what runs; the modes stay in each node's `ui.mode`, and the
// whole document (muted and bypassed nodes included) rides along in the prompt's
// extra_data.extra_pnginfo under EDITOR_KEY: history keeps it and SaveImage writes it into
// the PNG, so reloading either gives back what was on the canvas. (It is wrapped, not a bare
// document: `main.py run image.png` takes the first bare document it finds and must run what
// ran, not the muted nodes.)

import { isLink, typesCompatible } from "./graph.js";

export const MODES = { muted: "muted", bypassed: "bypassed" };

/** The mode of a node: "muted", "bypassed" or null (always runs). */
export function nodeMode(node) {
  return node?.ui?.mode === MODES.muted || node?.ui?.mode === MODES.bypassed ? node.ui.mode : null;
}

/** Toggle `mode` on `ids`: all get it, or (when all had it) all lose it. */
export function toggleMode(graph, ids, mode) {
  const nodes = ids.map((id) => graph.nodes.get(id)).filter(Boolean);
  if (!nodes.length) return;
  const clear = nodes.every((node) => nodeMode(node) === mode);
  for (const node of nodes) {
    if (clear) delete node.ui.mode;
    else node.ui.mode = mode;
  }
  graph.changed({ mode: ids });
}

/** The input of bypassed `node` that feeds consumers of its output `outputName` wanting `wantType`. */
function bypassInput(graph, node, outputName, wantType) {
  const spec = graph.spec(node.type);
  if (!spec) return null;
  const sockets = spec.inputs.filter((input) => !input.widget || isLink(node.inputs[input.name]));
  const slot = spec.outputs.findIndex((output) => output.name === outputName);
  const outputType = spec.outputs[slot]?.type ?? wantType;
  const fits = (input) => typesCompatible(input.type, outputType) && typesCompatible(input.type, wantType);
  if (!wantType || wantType === "*") return sockets[slot] ?? sockets[0] ?? null;
  if (sockets[slot] && fits(sockets[slot])) return sockets[slot];
  return sockets.find((input) => input.type === wantType) ?? sockets.find(fits) ?? null;
}

/** Is `node` a reroute the editor resolves (graph.js's REROUTE_SPEC)? */
export function isReroute(graph, node) {
  return !!graph.spec(node?.type)?.editorOnly;
}

/** What a link to `value` resolves to once reroutes (`modes`: and muted and bypassed nodes)
 * are gone (undefined: drop). */
function resolveLink(graph, value, wantType, seen = new Set(), modes = true) {
  const source = graph.nodes.get(String(value[0]));
  if (!source) return value;
  if (isReroute(graph, source)) {
    const passed = source.inputs.input;
    if (!isLink(passed) || seen.has(source.id)) return undefined;
    return resolveLink(graph, passed, wantType, new Set([...seen, source.id]), modes);
  }
  const mode = modes ? nodeMode(source) : null;
  if (mode === MODES.muted) return undefined;
  if (mode !== MODES.bypassed) return value;
  const key = `${source.id}:${value[1]}`;
  if (seen.has(key)) return undefined;  // a loop of bypassed nodes feeds nothing
  const outputName = graph.outputName(source.id, value[1]);
  const input = bypassInput(graph, source, outputName, wantType);
  const passed = input ? source.inputs[input.name] : undefined;
  if (!isLink(passed)) return undefined;
  return resolveLink(graph, passed, wantType, new Set([...seen, key]), modes);
}

/** The document to queue: `doc` (from graph.toDocument()) without reroutes and without muted
 * and bypassed nodes (`modes` false: those stay, e.g. for ComfyUI's format, which has modes). */
export function promptDocument(graph, doc, { modes = true } = {}) {
  const nodes = {};
  for (const [id, entry] of Object.entries(doc.nodes)) {
    if ((modes && nodeMode(entry)) || isReroute(graph, entry)) continue;
    const spec = graph.spec(entry.type);
    const inputs = {};
    for (const [name, value] of Object.entries(entry.inputs)) {
      if (!isLink(value)) {
        inputs[name] = value;
        continue;
      }
      const wantType = spec?.inputs.find((input) => input.name === name)?.type;
      const resolved = resolveLink(graph, value, wantType, new Set(), modes);
      if (resolved !== undefined) inputs[name] = resolved;
    }
    nodes[id] = { ...entry, inputs };
  }
  return { ...doc, nodes };
}

export const EDITOR_KEY = "latentflow_editor";

/** The prompt's extra_data carrying the editor's whole `doc` (see the top of this file). */
export function editorExtraData(doc) {
  return { extra_pnginfo: { [EDITOR_KEY]: { workflow: doc } } };
}

/** The editor's document kept in a prompt's `extraData` (history), or null. */
export function editorWorkflowOf(extraData) {
  const workflow = extraData?.extra_pnginfo?.[EDITOR_KEY]?.workflow;
  return workflow && typeof workflow === "object" && workflow.nodes ? workflow : null;
}
