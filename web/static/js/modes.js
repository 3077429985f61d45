// Node modes: a muted node is left out of the prompt; a bypassed node is left out and hands
// one of its inputs to each consumer of its outputs. The rules are engine/comfyui_graph.py's
// (ComfyUI's frontend): the input in the output's slot when its type fits, else the first input
// of exactly the wanted type, else the first that fits. The editor applies them before it
// sends, so the server sees only what runs; the modes stay in each node's `ui.mode`.

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

/** What a link to `value` resolves to once muted and bypassed nodes are gone (undefined: drop). */
function resolveLink(graph, value, wantType, seen = new Set()) {
  const source = graph.nodes.get(String(value[0]));
  if (!source) return value;
  const mode = nodeMode(source);
  if (mode === MODES.muted) return undefined;
  if (mode !== MODES.bypassed) return value;
  const key = `${source.id}:${value[1]}`;
  if (seen.has(key)) return undefined;  // a loop of bypassed nodes feeds nothing
  const outputName = graph.outputName(source.id, value[1]);
  const input = bypassInput(graph, source, outputName, wantType);
  const passed = input ? source.inputs[input.name] : undefined;
  if (!isLink(passed)) return undefined;
  return resolveLink(graph, passed, wantType, new Set([...seen, key]));
}

/** The document to queue: `doc` (from graph.toDocument()) without muted and bypassed nodes. */
export function promptDocument(graph, doc) {
  const nodes = {};
  for (const [id, entry] of Object.entries(doc.nodes)) {
    if (nodeMode(entry)) continue;
    const spec = graph.spec(entry.type);
    const inputs = {};
    for (const [name, value] of Object.entries(entry.inputs)) {
      if (!isLink(value)) {
        inputs[name] = value;
        continue;
      }
      const wantType = spec?.inputs.find((input) => input.name === name)?.type;
      const resolved = resolveLink(graph, value, wantType);
      if (resolved !== undefined) inputs[name] = resolved;
    }
    nodes[id] = { ...entry, inputs };
  }
  return { ...doc, nodes };
}
